"""The end-to-end scenario (`e2e.scenario`), run on kind by `e2e/run` (`python3 -m e2e`) and
on the node tier's real kubelet by `tests/node/test_e2e_scenario.py`."""
