-- brume's example config: one Mist webhook in, alerts out to a file.
-- Relative paths are relative to this file's folder.
-- Start it with:   brume run -c examples/brume.lua

listen   = { "0.0.0.0:8080" }      -- where Mist posts; for HTTPS add an entry like
--         { addr = "0.0.0.0:8443", tls = { cert = "/etc/brume/fullchain.pem",
--                                          key = "/etc/brume/privkey.pem" } }
admin    = "127.0.0.1:9090"        -- GET /healthz, GET /metrics, POST /reload
watch    = true                    -- reload when this file, a rule or a script changes
workers  = 0                       -- 0: one per core
data_dir = "../var"
rules    = "../rules"              -- every *.lua there is a rule, run in file-name order
scripts  = "../scripts"            -- require "x" looks here first, then in the built-in scripts

limits = {
  instructions = 1000000,          -- per rule call on one event
  time         = "1s",             -- per rule call, whatever is left of the budget
  memory       = "64MB",           -- per worker's Lua VM
}

sources = {
  -- In Mist: Organization > Settings > Webhooks, URL http://<this host>:8080/mist,
  -- with the same secret. Mist signs every post with it (X-Mist-Signature-v2).
  mist = { path = "/mist", secret = env("MIST_WEBHOOK_SECRET"), max_body = "8MB" },
  -- To take in what Mist failed to post while brume was down (README: Backfill),
  -- add to the source above an API token with read access (Observer) and the
  -- webhook's id:
  --   mist = { api = "https://api.mist.com", token = env("MIST_API_TOKEN"),
  --            org_id = "...", webhook_id = "..." },
}

targets = {
  -- A file of JSON lines, so this example needs no outside account.
  secops = { kind = "file", path = "../var/alerts.jsonl" },
}
