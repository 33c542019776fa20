"""Hardware inventory: what a machine is made of, as a versioned JSON document.

    agent.py    the collector (pyudev + sysfs; standard library otherwise, so the discovery
                image carries no pydantic): `python3 -m netbootd.inventory.agent`
    schema.py   the document's pydantic models (version 1), the JSON Schema checked in beside
                it (inventory-v1.schema.json), the summary a listing shows and what changed
                between two reports
    nixhw.py    a NixOS module fragment from an inventory (`netbootd hosts hardware --nix`)
"""
