from netbootd.cli import main

raise SystemExit(main())
