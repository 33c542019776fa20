"""The house plan for netbootd's tests and benchmarks: processes, network namespaces, skips, and
the end-to-end lab where real QEMU PXE clients boot from netbootd. Used by tests/integration,
tests/e2e and bench/; not part of the netbootd wheel. Only the standard library (pytest only
inside `skips.unavailable`), and netbootd only as a subprocess: it speaks to netbootd the way an
operator does.

    procs     processes: started with PR_SET_PDEATHSIG, only ever stopped by their PID
    netns     namespaces named after the process that made them; `cleanup_stale`; `Env`
    skips     `unavailable(reason)`: skip, or fail under NETBOOTD_REQUIRE_E2E=1; prerequisites
    lab, vm   the e2e lab: bridge, site DHCP server, `netbootd serve`, QEMU clients, evidence;
              `Lab.add_host` puts another machine (an attacker, a second client) on the bridge
    flood     `python -m testbed.flood`: a LAN attacker holding thousands of idle connections
    demo      `python -m testbed demo|boot|cleanup` (what `make demo` runs)
    nixenv, sanboot_disk   a private Nix store; a gold disk whose MBR counts its boots
    fuzz      the hostile-LAN lab: `serve` in a namespace, bounded fuzzers, valid probes
    ipxebuild `netbootd ipxe build` from the vendored iPXE snapshot, compiled once in
              tests/e2e/.cache/ipxe-work (later builds relink)

The rules every user keeps (and the reasons):

- Nothing is created in the root network namespace: every bridge, veth, tap and server lives in
  namespaces of the run's own, so a run cannot disturb the machine or a parallel run.
- Every namespace and work directory is named `<prefix>-<pid>-<starttime>-...` after the process
  that made it. The pid alone is not enough (pids are reused); pid + start time (field 22 of
  /proc/PID/stat) names one process for the machine's uptime. So a later run can tell a killed
  run's leftovers (owner gone: remove them, processes inside first) from a parallel run's (owner
  alive: leave them alone). Each user has its own prefix (nbde2e, nbdbench, nbdtd, ...).
- Every child is started with PR_SET_PDEATHSIG=SIGKILL, so it dies with the harness even when
  the harness is SIGKILLed (which no finalizer, atexit or signal handler can catch); it survives
  the exec of `ip netns exec`.
- Processes are only ever stopped by their PID: the ones a run spawned, and (at cleanup) what is
  still running inside that run's own namespaces -- never by name (no pkill), so nothing of a
  parallel run or of the machine is touched.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
