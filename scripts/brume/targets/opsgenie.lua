-- Opsgenie Alert API: create an alert (alias = dedup_key), or acknowledge
-- or close it by alias (message.action). Opsgenie answers 202 and handles
-- the request asynchronously. EU accounts: url = "https://api.eu.opsgenie.com".
local t = require "brume.target"

local M = {
  max_age = "24h",
  options = {
    url = { "url", default = "https://api.opsgenie.com" },
    api_key = { "string", required = true, secret = true },
    tags = "list",
    team = "string",
  },
}

local priorities = { critical = "P1", error = "P2", warning = "P3", info = "P5" }

function M.request(target, msg, ctx)
  local headers = { Authorization = "GenieKey " .. target.api_key }
  if msg.raw then return t.post(t.join(target.url, "/v2/alerts"), t.raw(msg), headers) end
  local alias = t.cut(t.dedup_key(msg, ctx), 512)
  local action = t.action(msg)
  if action ~= "trigger" then
    local verb = action == "resolve" and "close" or "acknowledge"
    return t.post(t.join(target.url, "/v2/alerts/" .. t.urlencode(alias) .. "/" .. verb ..
                         "?identifierType=alias"),
                  { source = "brume", note = t.cut(t.plain(msg), 25000) }, headers)
  end
  -- Opsgenie takes 8000 characters of details in all.
  local details, used = {}, 0
  for _, f in ipairs(t.fields(msg)) do
    local value = t.cut(f[2], 1000)
    if used + #f[1] + #value > 8000 then break end
    used = used + #f[1] + #value
    details[f[1]] = value
  end
  return t.post(t.join(target.url, "/v2/alerts"), {
    message = t.cut(t.title(msg), 130),
    alias = alias,
    description = t.text(msg) ~= "" and t.cut(t.text(msg), 15000) or nil,
    priority = priorities[t.severity(msg)],
    details = next(details) and details or nil,
    tags = target.tags,
    responders = target.team and { { type = "team", name = target.team } } or nil,
    source = "brume",
  }, headers)
end

return M
