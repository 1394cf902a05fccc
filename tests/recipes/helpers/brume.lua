-- The rule builders' clock tests (cases/) run on this config and rules/.
sources = { mist = { path = "/mist", secret = "helper-tests" } }
targets = { out = { kind = "file", path = "out.jsonl" } }
rules = "rules"
