-- Sends each alarm to every target: a full message; a resolve to the kinds
-- that know one (pagerduty, opsgenie, servicenow, jira, zendesk); and a raw
-- body to the webhook.
local mist = require "brume.mist"

local targets = { "slack", "teams", "webex", "gchat", "discord", "mattermost", "pagerduty",
                  "opsgenie", "servicenow", "jira", "jira_dc", "zendesk", "webhook", "file" }
local resolvable = { pagerduty = true, opsgenie = true, servicenow = true, jira = true,
                     jira_dc = true, zendesk = true }

local function message(ev)
  return {
    title = "Rogue AP detected on " .. tostring(mist.device_name(ev) or "?"),
    text = ("%d rogue BSSIDs heard; SSIDs: %s"):format(#(ev.bssids or {}),
                                                        table.concat(ev.ssids or {}, ", ")),
    severity = "critical",
    fields = { site = mist.site(ev), count = ev.count },
    link = "https://manage.mist.com/admin/?org_id=" .. tostring(ev.org_id) .. "#!alerts",
    dedup_key = "rogue:" .. tostring(ev.id),
  }
end

return {
  topics = "alarms",
  on_event = function(ev)
    for _, name in ipairs(targets) do
      brume.send(name, message(ev))
      if resolvable[name] then
        local m = message(ev)
        m.action = "resolve"
        brume.send(name, m)
      end
    end
    brume.send("webhook", { raw = { custom = "payload" } })
  end,
}
