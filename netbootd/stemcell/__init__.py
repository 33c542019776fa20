"""Stem-cell storage: iSCSI gold images and per-host LUNs (iscsi), disk clones (clone), the tgtd
adapter (tgtadm) and the NFS export tree (nfs_tree)."""
