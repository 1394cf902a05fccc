-- The config the recipes in rules/ run with: every target they name, with
-- its secrets from the environment. Copy the recipes you want into your own
-- rules folder and the targets they use into your config.
--
--   brume check -c examples/recipes/brume.lua
--   brume test  -c examples/recipes/brume.lua examples/recipes/tests/*.lua
--
-- Each recipe has a clock test in tests/ (the suite runs them all).

listen   = { "0.0.0.0:8080" }
data_dir = "../../var/recipes"
rules    = "rules"

sources = {
  -- Alarms, audits, device events and up/downs, client joins, occupancy:
  -- Mist sends a topic twice when it is set at organisation and at site
  -- level, so events whose id was seen in the last 10 minutes are dropped.
  mist = { path = "/mist", secret = env("MIST_WEBHOOK_SECRET"), dedupe = "10m" },
  -- Zone and location updates: many, each worth little once old, so they
  -- are answered at once (durability "none"). No dedupe: their `id` is the
  -- client's, the same on its every enter and exit.
  location = { path = "/mist-location", secret = env("MIST_WEBHOOK_SECRET"),
               durability = "none" },
}

targets = {
  secops     = { kind = "slack", url = env("SLACK_SECOPS_URL"), rate = "1/s" },
  facilities = { kind = "slack", url = env("SLACK_FACILITIES_URL"), rate = "1/s" },
  netops     = { kind = "teams", url = env("TEAMS_NETOPS_URL") },
  oncall     = { kind = "pagerduty", routing_key = env("PAGERDUTY_ROUTING_KEY") },
  tickets    = { kind = "servicenow", url = env("SERVICENOW_URL"), user = "brume",
                 password = env("SERVICENOW_PASSWORD"), category = "network" },
  locations  = { kind = "webhook", url = env("LOCATION_WEBHOOK_URL"),
                 secret = env("LOCATION_WEBHOOK_SECRET") },
}
