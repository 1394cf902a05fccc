sources = { mist = { path = "/mist", insecure = true } }
targets = { out = { kind = "file", path = "/dev/null" } }
limits = { instructions = 100000, memory = "8MB" }
