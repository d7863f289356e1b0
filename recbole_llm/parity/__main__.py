from recbole_llm.parity.runner import main

main()
