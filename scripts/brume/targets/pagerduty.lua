-- PagerDuty Events API v2: trigger, acknowledge or resolve (message.action)
-- an alert identified by its dedup_key (the message's, or the delivery's).
-- PagerDuty answers 202 and folds repeats of a dedup_key into one incident.
local t = require "brume.target"

local M = {
  max_age = "24h",
  options = {
    url = { "url", default = "https://events.pagerduty.com/v2/enqueue" },
    routing_key = { "string", required = true, secret = true },
    source = { "string", default = "brume" },
    component = "string",
    group = "string",
    class = "string",
  },
}

function M.request(target, msg, ctx)
  if msg.raw then return t.post(target.url, t.raw(msg)) end
  local action = t.action(msg)
  local body = {
    routing_key = target.routing_key,
    event_action = action,
    dedup_key = t.cut(t.dedup_key(msg, ctx), 255),
  }
  if action == "trigger" then
    local summary = t.title(msg)
    if msg.title and t.text(msg) ~= "" then summary = summary .. ": " .. t.text(msg) end
    local details = t.details(msg)
    body.payload = {
      summary = t.cut(summary, 1024),
      source = target.source,
      severity = t.severity(msg),
      component = target.component,
      group = target.group,
      class = target.class,
      custom_details = next(details) and details or nil,
    }
    body.client = "brume"
    if msg.link then body.links = { { href = tostring(msg.link), text = "Open" } } end
  end
  return t.post(target.url, body)
end

return M
