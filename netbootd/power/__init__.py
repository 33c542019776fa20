"""Power control of enrolled hosts through their BMCs (issue 16).

    settings.py  a host's BMC settings (IPMI address[:port] or Redfish URL, user, CA file) as
                 values, validated once; pure
    credentials.py BMC passwords at rest: <state>/bmc/<mac>/password, 0600 in 0700 directories,
                 like host identities (identity/vault.py); never logged, never printed back
    clients.py   the two wire protocols: IPMI v2.0 (pyghmi) and Redfish (sushy), one small
                 class each with status/on/off/cycle/boot_once_pxe
    control.py   a power action with a deadline and retries, run off the caller's thread (the
                 servers' event loop never waits on a BMC); BmcError when the BMC does not answer

The settings rows live in the store (`bmcs`, migration 9); actions.py's bmc_* and power_*
functions are what the CLI (cli/power.py) and the admin API share.
"""
