-- Zendesk: one ticket per dedup key (its external_id); later messages add a
-- private comment, and action = "resolve" sets it solved. API token auth:
-- email and token.
local t = require "brume.target"

local M = {
  max_age = "24h",
  ticket = true,
  options = {
    url = { "url", required = true }, -- https://<subdomain>.zendesk.com
    email = { "string", required = true },
    token = { "string", required = true, secret = true },
    group_id = "integer",
    tags = "list",
  },
}

local priorities = { critical = "urgent", error = "high", warning = "normal", info = "low" }

function M.request(target, msg, ctx)
  local key = t.cut(t.dedup_key(msg, ctx), 255)
  local headers = { Accept = "application/json", ["Content-Type"] = "application/json",
                    Authorization = t.basic(target.email .. "/token", target.token) }
  local function req(method, url, body)
    return { method = method, url = url, headers = headers, body = body and t.json(body) }
  end
  local plan = {
    ticket = key,
    lookup = req("GET", t.join(target.url, "/api/v2/tickets.json?external_id=" .. t.urlencode(key))),
  }
  -- The first ticket not solved or closed: once resolved, the key's next
  -- alert is a new ticket (Zendesk closes solved tickets, and a closed one
  -- takes no comment).
  plan.lookup.ref = "tickets.?status!=solved|closed.id"
  local comment = { body = t.plain(msg), public = false }
  if t.action(msg) == "resolve" then
    plan.update = req("PUT", t.join(target.url, "/api/v2/tickets/{ref}.json"),
                      { ticket = { status = "solved", comment = comment } })
    plan.closes = true
    return plan
  end
  plan.create = req("POST", t.join(target.url, "/api/v2/tickets.json"), { ticket = {
    subject = t.cut(t.title(msg), 255),
    comment = { body = t.plain(msg, { no_title = true }) ~= "" and t.plain(msg, { no_title = true })
                       or t.title(msg) },
    priority = priorities[t.severity(msg)],
    external_id = key,
    group_id = target.group_id,
    tags = target.tags,
  } })
  plan.create.ref = "ticket.id"
  plan.update = req("PUT", t.join(target.url, "/api/v2/tickets/{ref}.json"),
                    { ticket = { comment = comment } })
  return plan
end

return M
