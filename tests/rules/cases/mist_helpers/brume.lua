sources = { mist = { path = "/mist", insecure = true } }
targets = { out = { kind = "file", path = "/dev/null" } }
