-- brume with real targets: rogue APs to Slack and Teams, pages to
-- PagerDuty, incidents to ServiceNow. Secrets come from the environment.
--   brume check -c examples/targets.lua

listen   = { "0.0.0.0:8080" }
data_dir = "../var"
rules    = "../rules"

sources = {
  mist = { path = "/mist", secret = env("MIST_WEBHOOK_SECRET") },
}

targets = {
  -- A Slack incoming webhook: Block Kit. Slack takes about a message a second.
  secops = { kind = "slack", url = env("SLACK_WEBHOOK_URL"), rate = "1/s" },

  -- A Teams Workflows webhook ("When a Teams webhook request is received"):
  -- an Adaptive Card. The old Office 365 connector URLs no longer work.
  netops = { kind = "teams", url = env("TEAMS_WORKFLOW_URL") },

  -- PagerDuty Events v2: trigger, acknowledge, resolve by dedup_key.
  oncall = { kind = "pagerduty", routing_key = env("PAGERDUTY_ROUTING_KEY") },

  -- ServiceNow incidents: one per dedup_key, work notes after, resolved on
  -- action = "resolve".
  tickets = {
    kind = "servicenow",
    url = "https://example.service-now.com",
    user = "brume",
    password = env("SERVICENOW_PASSWORD"),
    assignment_group = "Network Operations",
  },

  -- Everything, as JSON lines, for the record.
  archive = { kind = "file", path = "../var/archive.jsonl" },
}
