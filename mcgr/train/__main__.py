from mcgr.train.cli import main

raise SystemExit(main())
