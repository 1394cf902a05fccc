-- One target of each kind (two for jira: Cloud and Data Center), with
-- obviously fake secrets: tests/integration/test_adapters.py checks that
-- none of them shows in `brume test`'s output and that each request has
-- the shape the vendor documents.
sources = { mist = { path = "/mist", insecure = true } }

targets = {
  slack = { kind = "slack", url = "https://hooks.example.com/services/T000/B000/SLACK-SECRET-PATH-123",
            channel = "#secops", username = "brume" },
  teams = { kind = "teams",
            url = "https://teams.example.com/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=TEAMS-SECRET-SIG-123" },
  webex = { kind = "webex", token = "WEBEX-SECRET-TOKEN-123", room_id = "Y2lzY29zcGFyazovL3VzL1JPT00vZXhhbXBsZQ" },
  gchat = { kind = "gchat",
            url = "https://chat.example.com/v1/spaces/AAAA/messages?key=GCHAT-SECRET-KEY-123&token=GCHAT-SECRET-TOKEN-123" },
  discord = { kind = "discord", url = "https://discord.example.com/api/webhooks/123/DISCORD-SECRET-TOKEN-123",
              username = "brume" },
  mattermost = { kind = "mattermost", url = "https://mattermost.example.com/hooks/MATTERMOST-SECRET-KEY-123",
                 channel = "secops", username = "brume" },
  pagerduty = { kind = "pagerduty", routing_key = "PAGERDUTY-SECRET-ROUTING-KEY-123",
                component = "wifi", group = "site", class = "rogue_ap" },
  opsgenie = { kind = "opsgenie", api_key = "OPSGENIE-SECRET-KEY-123", tags = { "mist", "rogue" },
               team = "secops" },
  servicenow = { kind = "servicenow", url = "https://example.service-now.com", user = "brume",
                 password = "SERVICENOW-SECRET-PASSWORD-123", assignment_group = "Network",
                 category = "network" },
  jira = { kind = "jira", url = "https://example.atlassian.net", project = "OPS",
           email = "brume@example.com", token = "JIRA-SECRET-TOKEN-123", labels = { "mist" },
           resolve_transition = "31" },
  jira_dc = { kind = "jira", url = "https://jira.example.com", project = "OPS",
              token = "JIRA-DC-SECRET-TOKEN-123" },
  zendesk = { kind = "zendesk", url = "https://example.zendesk.com", email = "brume@example.com",
              token = "ZENDESK-SECRET-TOKEN-123", group_id = 123, tags = { "mist" } },
  webhook = { kind = "webhook", url = "https://hooks.example.com/brume",
              secret = "whsec_V0VCSE9PSy1TRUNSRVQtMTIz",
              headers = { ["X-Api-Key"] = "WEBHOOK-SECRET-HEADER-123" } },
  file = { kind = "file", path = "/dev/null" },
}
