"""Role images: the content-addressed artifact store and role import (artifacts), incremental
initrds (compose), the Nix CLI (nixbuild), `role build` (build) and `build-image`
(static_export)."""
