-- ServiceNow Table API: one incident per dedup key. The first message
-- creates it (correlation_id = the dedup key), later ones add a work note,
-- and action = "resolve" resolves it (a later message for the key opens a
-- new one). ServiceNow has no idempotency key, so
-- before creating, brume looks for an incident with that correlation_id:
-- a retry after a lost answer does not open a second one.
local t = require "brume.target"

local M = {
  max_age = "24h",
  ticket = true,
  options = {
    url = { "url", required = true }, -- https://<instance>.service-now.com
    user = "string",
    password = { "string", secret = true },
    token = { "string", secret = true }, -- OAuth bearer token, instead of user and password
    table = { "string", default = "incident" },
    assignment_group = "string",
    caller_id = "string",
    category = "string",
    resolve_state = { "string", default = "6" },
    close_code = { "string", default = "Solution provided" }, -- one of your instance's close codes
  },
}

function M.check(o)
  if not o.token and not (o.user and o.password) then
    return "servicenow needs token, or user and password"
  end
end

-- ServiceNow's urgency and impact: 1 high, 2 medium, 3 low.
local levels = { critical = { "1", "1" }, error = { "2", "2" }, warning = { "2", "3" },
                 info = { "3", "3" } }

function M.request(target, msg, ctx)
  -- '^' separates the terms of an encoded query: a key holding one would
  -- match other incidents, so it (and control characters) becomes '_'.
  local key = (t.cut(t.dedup_key(msg, ctx), 100):gsub("[%^%c]", "_"))
  local base = t.join(target.url, "/api/now/table/" .. target.table)
  local headers = {
    Accept = "application/json",
    ["Content-Type"] = "application/json",
    Authorization = target.token and ("Bearer " .. target.token)
                    or t.basic(target.user, target.password),
  }
  local function req(method, url, body)
    return { method = method, url = url, headers = headers, body = body and t.json(body) }
  end
  local plan = {
    ticket = key,
    -- Open incidents only: once resolved, the key's next alert is a new incident.
    lookup = req("GET", base .. "?sysparm_query=" ..
                        t.urlencode("correlation_id=" .. key .. "^active=true^state!=" ..
                                    target.resolve_state) ..
                        "&sysparm_fields=sys_id&sysparm_limit=1"),
  }
  plan.lookup.ref = "result.0.sys_id"
  local note = t.cut(t.plain(msg), 4000)
  if t.action(msg) == "resolve" then
    -- Nothing to resolve when no incident was opened: the plan has no create.
    plan.update = req("PATCH", base .. "/{ref}", {
      state = target.resolve_state, close_code = target.close_code, close_notes = note,
    })
    plan.closes = true
    return plan
  end
  local level = levels[t.severity(msg)]
  plan.create = req("POST", base, {
    short_description = t.cut(t.title(msg), 160),
    description = t.plain(msg, { no_title = true }),
    correlation_id = key,
    correlation_display = "brume",
    urgency = level[1],
    impact = level[2],
    assignment_group = target.assignment_group,
    caller_id = target.caller_id,
    category = target.category,
  })
  plan.create.ref = "result.sys_id"
  plan.update = req("PATCH", base .. "/{ref}", { work_notes = note })
  return plan
end

return M
