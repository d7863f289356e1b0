from recbole_llm.parity.runner import main

raise SystemExit(main())
