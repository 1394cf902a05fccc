-- Jira: one issue per dedup key; later messages add a comment, and
-- action = "resolve" moves it through `resolve_transition` (a transition
-- id of your workflow) or, without one, comments that it resolved.
-- Jira Cloud (REST v3, description in Atlassian Document Format, basic auth
-- with an e-mail and an API token) or Data Center (REST v2, plain text,
-- a personal access token or user and password). The issue carries the
-- label brume-<hash of the dedup key>, by which brume finds it again.
local t = require "brume.target"

local M = {
  max_age = "24h",
  ticket = true,
  options = {
    url = { "url", required = true },
    project = { "string", required = true },
    issue_type = { "string", default = "Task" },
    flavor = "string", -- "cloud" or "datacenter"; by default cloud for *.atlassian.net
    email = "string",
    user = "string",
    token = { "string", secret = true },
    password = { "string", secret = true },
    labels = "list",
    resolve_transition = "string",
  },
}

local function flavor(o)
  return o.flavor or (o.url:match("%.atlassian%.net") and "cloud" or "datacenter")
end

function M.check(o)
  local f = flavor(o)
  if f ~= "cloud" and f ~= "datacenter" then return "flavor must be \"cloud\" or \"datacenter\"" end
  if f == "cloud" and not (o.email and o.token) then return "jira cloud needs email and token" end
  if f == "datacenter" and not (o.token or (o.user and o.password)) then
    return "jira data center needs token, or user and password"
  end
end

-- Atlassian Document Format: one paragraph per line (ADF text may not be empty).
local function adf(text)
  local content = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if line ~= "" then
      content[#content + 1] = { type = "paragraph", content = { { type = "text", text = line } } }
    end
  end
  if #content == 0 then -- ADF wants a non-empty text, and an empty table would be an object
    content[1] = { type = "paragraph", content = { { type = "text", text = "(no details)" } } }
  end
  return { type = "doc", version = 1, content = content }
end

function M.request(target, msg, ctx)
  local cloud = flavor(target) == "cloud"
  local api = t.join(target.url, cloud and "/rest/api/3" or "/rest/api/2")
  local auth
  if cloud then auth = t.basic(target.email, target.token)
  elseif target.token then auth = "Bearer " .. target.token
  else auth = t.basic(target.user, target.password) end
  local headers = { Accept = "application/json", ["Content-Type"] = "application/json",
                    Authorization = auth }
  local function req(method, url, body)
    return { method = method, url = url, headers = headers, body = body and t.json(body) }
  end
  local function doc(text) return cloud and adf(text) or text end
  local key = t.dedup_key(msg, ctx)
  local label = "brume-" .. brume.hmac_sha256("brume", key):sub(1, 16)
  -- Open issues only: once resolved, the key's next alert is a new issue.
  local jql = ('project = "%s" AND labels = "%s" AND statusCategory != Done'):format(
    target.project, label)
  local plan = {
    ticket = key,
    lookup = req("GET", api .. (cloud and "/search/jql" or "/search") .. "?jql=" ..
                        t.urlencode(jql) .. "&fields=key&maxResults=1"),
  }
  plan.lookup.ref = "issues.0.key"
  local note = t.plain(msg)
  if t.action(msg) == "resolve" then
    if target.resolve_transition then
      plan.update = req("POST", api .. "/issue/{ref}/transitions", {
        transition = { id = target.resolve_transition },
        update = { comment = { { add = { body = doc("Resolved: " .. note) } } } },
      })
    else
      plan.update = req("POST", api .. "/issue/{ref}/comment", { body = doc("Resolved: " .. note) })
    end
    plan.closes = true
    return plan
  end
  local labels = { label }
  for _, l in ipairs(target.labels or {}) do labels[#labels + 1] = l end
  plan.create = req("POST", api .. "/issue", { fields = {
    project = { key = target.project },
    issuetype = { name = target.issue_type },
    summary = t.cut(t.title(msg):gsub("\n", " "), 255),
    description = doc(t.plain(msg, { no_title = true })),
    labels = labels,
  } })
  plan.create.ref = "key"
  plan.update = req("POST", api .. "/issue/{ref}/comment", { body = doc(note) })
  return plan
end

return M
