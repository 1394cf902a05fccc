-- brume.target: what every target adapter shares.
--
-- An adapter is scripts/brume/targets/<kind>.lua returning
--
--   {
--     options = { name = { "type", required = true, secret = true, default = v }, ... },
--     max_age = "1h",           -- default give-up age for this kind
--     ticket = true,            -- requests are ticket plans (see below)
--     check = function(options) return "problem" [, option] or nil end,   -- optional;
--                              -- the problem is shown at OPTION's line (default: kind's)
--     settings = function(options) return { name = "value", ... } end,  -- optional
--     request = function(target, message, ctx) return request end,
--   }
--
-- request() turns a neutral message (title, text, severity, fields, link,
-- dedup_key, action, raw) into { method, url, headers, body } - or, for a
-- ticket kind, a plan { ticket = key, lookup = req, create = req,
-- update = req, closes = true|nil } whose `ref` fields say where the
-- ticket's id is in the answer ("result.sys_id"; array positions count from
-- 0; "tickets.?status!=solved|closed.id" takes the first element of the
-- array whose field is not one of those values, "?field=a|b" one that is)
-- and whose update URL holds "{ref}". `closes` marks a plan that resolves
-- the ticket: brume then forgets it, and the key's next message makes a new
-- one. ctx is { key, rule, topic, event, target }.
--
-- A plain request may also carry `order = key`: a target's deliveries with
-- the same order key go one at a time, oldest first (a later one waits
-- while an earlier one is tried again), as a ticket's do; and `show`, a
-- table `brume test` shows instead of the request (for kinds that are not
-- HTTP: { kafka = { topic, key, value } }).
--
-- A kind the outbox does not send over HTTP (kafka, redis-stream) has a
-- transport in brume's C core, which reads its settings from
-- `settings(options)`: a table of string values the adapter makes once,
-- when the config is checked.
--
-- Option types: string, url, integer, number, boolean, duration ("90s",
-- "15m" or seconds), rate ("1/s", "20/m", "100/h"), list (of strings),
-- table (of strings), settings (true, false or a table of strings), path.
-- `secret = true` makes every value of an option secret; `secret = { "pw" }`
-- only those fields of a table.

local M = {}

-- Options every kind takes, besides its own.
M.common = {
  kind = { "string", required = true },
  timeout = { "duration", default = 10, min = 0.05, max = 3600 }, -- 0 would be no timeout at all
  rate = { "rate" },
  concurrency = { "integer", default = 4, min = 1, max = 1000 },
  proxy = { "string", secret = true }, -- may hold user:password
  max_age = { "duration" },
  backoff = { "duration", default = 2 }, -- the first retry's wait; doubles, up to 10 minutes
}

M.kinds = {
  "discord", "file", "gchat", "jira", "kafka", "mattermost", "opsgenie", "pagerduty",
  "redis-stream", "servicenow", "slack", "teams", "webex", "webhook", "zendesk",
}

local units = { [""] = 1, ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 }

function M.duration(v)
  if type(v) == "number" and v >= 0 then return v end
  if type(v) ~= "string" then return nil end
  local n, unit = v:match("^(%d+%.?%d*)%s*(%a*)$")
  if not n or not units[unit] then return nil end
  return tonumber(n) * units[unit]
end

local per = { s = 1, m = 60, h = 3600 }

-- Messages per second from "1/s", "20/m", "100/h" (or a number per second).
function M.rate(v)
  if type(v) == "number" and v > 0 then return v end
  if type(v) ~= "string" then return nil end
  local n, unit = v:match("^(%d+%.?%d*)%s*/%s*(%a)$")
  if not n or not per[unit] or tonumber(n) <= 0 then return nil end
  return tonumber(n) / per[unit]
end

local function is_strings(t, keyed)
  if type(t) ~= "table" then return false end
  for k, v in pairs(t) do
    if type(v) ~= "string" then return false end
    if not keyed and type(k) ~= "number" then return false end
    if keyed and type(k) ~= "string" then return false end
  end
  return true
end

local checks = {
  string = function(v) return type(v) == "string" and v or nil end,
  path = function(v) return type(v) == "string" and v ~= "" and v or nil end,
  url = function(v)
    return type(v) == "string" and v:match("^https?://[^/%s]+") and v or nil
  end,
  integer = function(v) return math.type(v) == "integer" and v or nil end,
  number = function(v) return type(v) == "number" and v or nil end,
  boolean = function(v) if type(v) == "boolean" then return v end end,
  duration = M.duration,
  rate = M.rate,
  list = function(v)
    if type(v) == "string" then return { v } end
    return is_strings(v, false) and v or nil
  end,
  table = function(v) return is_strings(v, true) and v or nil end,
  settings = function(v)
    if type(v) == "boolean" then return v end
    return is_strings(v, true) and v or nil
  end,
}

local described = {
  string = "a string", path = "a path", url = "an http(s) URL", integer = "an integer",
  number = "a number", boolean = "true or false", duration = "a duration (seconds, \"90s\", \"15m\")",
  rate = "a rate (\"1/s\", \"20/m\", \"100/h\")", list = "a list of strings",
  table = "a table of string values", settings = "true, false or a table of string values",
}

-- The adapter of KIND, or nil and why not.
function M.adapter(kind)
  local ok, adapter = pcall(require, "brume.targets." .. kind)
  if not ok then
    if tostring(adapter):find("not found", 1, true) then
      return nil, ("unknown kind '%s' (kinds: %s)"):format(kind, table.concat(M.kinds, ", "))
    end
    return nil, tostring(adapter)
  end
  if type(adapter) ~= "table" or type(adapter.request) ~= "function" then
    return nil, ("brume.targets.%s is not an adapter (it returns no request function)"):format(kind)
  end
  return adapter
end

--[[ Checks OPTIONS (a target's table from the config) for KIND. Returns
the options with defaults filled in, what brume's C side needs to know
(meta), and a list of { key, message } problems; a key KIND does not take
comes as { key, message, names }, names being the options it takes, sorted
(the config loader suggests the closest). ]]
function M.check(kind, options)
  local problems = {}
  local adapter, why = M.adapter(kind)
  if not adapter then return nil, nil, { { "kind", why } } end
  local spec = {}
  for k, s in pairs(M.common) do spec[k] = s end
  for k, s in pairs(adapter.options or {}) do
    spec[k] = type(s) == "string" and { s } or s
  end
  local names = {}
  for k in pairs(spec) do names[#names + 1] = k end
  table.sort(names)
  local out, secrets, failed = {}, {}, {}
  for k, v in pairs(options) do
    local s = spec[k]
    if not s then
      problems[#problems + 1] = { tostring(k), "unknown setting for kind " .. kind, names }
    else
      local value = checks[s[1]](v)
      if value == nil then
        failed[k] = true
        problems[#problems + 1] = { k, "expected " .. described[s[1]] }
      elseif (s.min and value < s.min) or (s.max and value > s.max) then
        problems[#problems + 1] = { k, ("must be between %s and %s"):format(s.min, s.max) }
      else
        out[k] = value
        if type(s.secret) == "table" and type(value) == "table" then
          for _, field in ipairs(s.secret) do secrets[#secrets + 1] = value[field] end
        elseif s.secret == true then
          if type(value) == "table" then
            for _, x in pairs(value) do secrets[#secrets + 1] = x end
          else
            secrets[#secrets + 1] = value
          end
        end
      end
    end
  end
  for k, s in pairs(spec) do
    if out[k] == nil and s.default ~= nil then out[k] = s.default end
    if out[k] == nil and s.required and not failed[k] then
      problems[#problems + 1] = { k, "required for kind " .. kind }
    end
  end
  if #problems == 0 and adapter.check then
    local problem, option = adapter.check(out)
    if problem then problems[#problems + 1] = { option or "kind", problem } end
  end
  local meta = {
    secrets = secrets,
    ticket = adapter.ticket == true,
    timeout = out.timeout,
    backoff = out.backoff,
    rate = out.rate or 0,
    concurrency = out.concurrency,
    proxy = out.proxy,
    max_age = out.max_age or M.duration(adapter.max_age or "24h"),
    path = kind == "file" and out.path or nil,
    signing_secret = adapter.signs and out.secret or nil,
  }
  if #problems == 0 and adapter.settings then meta.settings = adapter.settings(out) end
  return out, meta, problems
end

-- ---- messages ------------------------------------------------------------

local severities = { critical = "critical", error = "error", warning = "warning", info = "info",
                     crit = "critical", err = "error", warn = "warning", high = "error",
                     low = "info", notice = "info" }

-- The message's severity as critical, error, warning or info (default info).
function M.severity(msg)
  return severities[type(msg.severity) == "string" and msg.severity:lower() or ""] or "info"
end

-- "trigger" (default), "acknowledge" or "resolve".
function M.action(msg)
  local a = type(msg.action) == "string" and msg.action:lower() or "trigger"
  if a == "ack" then a = "acknowledge" end
  if a == "close" or a == "resolved" then a = "resolve" end
  if a ~= "acknowledge" and a ~= "resolve" then a = "trigger" end
  return a
end

function M.text(msg)
  return msg.text ~= nil and tostring(msg.text) or ""
end

-- A title, made up from the text when there is none.
function M.title(msg)
  if msg.title ~= nil and tostring(msg.title) ~= "" then return tostring(msg.title) end
  local first = M.text(msg):match("^[^\n]+")
  return first or "brume alert"
end

-- Cuts S to N bytes without splitting a UTF-8 character, with "…" when cut.
function M.cut(s, n)
  s = tostring(s)
  if #s <= n then return s end
  local i = n - 3
  while i > 0 and (s:byte(i + 1) or 0) & 0xC0 == 0x80 do i = i - 1 end
  return s:sub(1, i) .. "…"
end

local function value_string(v)
  if type(v) == "table" then return brume.json.encode(v) or "?" end
  return tostring(v)
end

-- The message's fields as a list of { name, value } strings, sorted by name
-- (tables print in hash order otherwise); a list of pairs keeps its order.
function M.fields(msg)
  local out = {}
  if type(msg.fields) ~= "table" then return out end
  if #msg.fields > 0 then
    for _, f in ipairs(msg.fields) do
      if type(f) == "table" then out[#out + 1] = { tostring(f[1] or f.name), value_string(f[2] or f.value) } end
    end
    return out
  end
  for k, v in pairs(msg.fields) do
    if v ~= brume.null then out[#out + 1] = { tostring(k), value_string(v) } end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

-- The fields as a table name -> string (for details objects).
function M.details(msg)
  local d = {}
  for _, f in ipairs(M.fields(msg)) do d[f[1]] = f[2] end
  return d
end

-- Title, text, fields and link as plain text lines.
function M.plain(msg, opts)
  opts = opts or {}
  local lines = {}
  if not opts.no_title then lines[#lines + 1] = M.title(msg) end
  if M.text(msg) ~= "" then lines[#lines + 1] = M.text(msg) end
  for _, f in ipairs(M.fields(msg)) do lines[#lines + 1] = f[1] .. ": " .. f[2] end
  if msg.link then lines[#lines + 1] = tostring(msg.link) end
  return table.concat(lines, "\n")
end

-- The same in Markdown: bold title, text, "**name:** value" lines, link.
function M.markdown(msg, bold)
  bold = bold or "**"
  local lines = { bold .. M.title(msg) .. bold }
  if M.text(msg) ~= "" then lines[#lines + 1] = M.text(msg) end
  for _, f in ipairs(M.fields(msg)) do lines[#lines + 1] = bold .. f[1] .. ":" .. bold .. " " .. f[2] end
  if msg.link then lines[#lines + 1] = tostring(msg.link) end
  return table.concat(lines, "\n")
end

-- S with a word joiner (U+2060) after each "<", so that text from an event
-- (an SSID is anyone's to choose) cannot make a mention such as Google
-- Chat's <users/all> or Webex's <@all>; it reads the same.
function M.no_mentions(s)
  return (tostring(s):gsub("<", "<\u{2060}"))
end

-- msg.raw passed through: a string as is, a table as JSON.
function M.raw(msg)
  if type(msg.raw) == "string" then return msg.raw end
  return brume.json.encode(msg.raw)
end

function M.json(t)
  local s, err = brume.json.encode(t)
  if not s then error("cannot encode the request body: " .. tostring(err), 2) end
  return s
end

-- A JSON POST request.
function M.post(url, body, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return { method = "POST", url = url, headers = h,
           body = type(body) == "string" and body or M.json(body) }
end

function M.basic(user, password)
  return "Basic " .. brume.base64.encode(user .. ":" .. password)
end

function M.urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- BASE without a trailing slash, then PATH.
function M.join(base, path)
  return (base:gsub("/+$", "")) .. path
end

-- The message's dedup key, or the delivery's key when it has none.
function M.dedup_key(msg, ctx)
  if msg.dedup_key ~= nil and tostring(msg.dedup_key) ~= "" then return tostring(msg.dedup_key) end
  return ctx.key
end

-- ---- templates -----------------------------------------------------------

-- The value at dotted PATH ("fields.site", "raw.aps.1") of MSG, or nil.
local function at_path(msg, path)
  local v = msg
  for part in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    local x = v[part]
    if x == nil and part:match("^%d+$") then x = v[tonumber(part)] end
    v = x
  end
  return v
end

-- What a template takes from the delivery rather than the message.
local context_names = { topic = true, rule = true, event = true, target = true }

local function scalar(v)
  if math.type(v) == "integer" then return tostring(v) end
  if type(v) == "number" then return ("%.17g"):format(v) end
  if type(v) == "string" then return v end
  if type(v) == "boolean" then return tostring(v) end
  return nil
end

-- Nil when S is a good template: "{" and "}" only around a name (a dotted
-- path, or one of topic, rule, event, target); else what is wrong.
function M.template_problem(s)
  local rest = s:gsub("{([%w_%.%-]+)}", "")
  if rest:find("[{}]") then
    return ("'%s' is not a template: {name} holds a field path (fields.site) or topic, rule, "
            .. "event, target"):format(s)
  end
end

-- Nil, or what is wrong with a key option K: a field path or a template.
function M.key_problem(k)
  if k:find("[{}]") then return M.template_problem(k) end
  if not k:match("^[%w_%-]+[%w_%.%-]*$") then
    return ("'%s' is neither a field path (fields.mac) nor a template"):format(k)
  end
end

-- TEMPLATE with each "{path}" replaced by the message's value at that
-- dotted path ("{fields.site}"), or by the delivery's for {topic}, {rule},
-- {event} and {target}. Raises, naming WHAT, when the message has no
-- string, number or boolean there.
function M.expand(template, msg, ctx, what)
  return (template:gsub("{([^{}]*)}", function(path)
    local v = context_names[path] and ctx[path] or scalar(at_path(msg, path))
    if v == nil then
      error(("%s: the message has no %s (a string or a number)"):format(what, path), 0)
    end
    return v
  end))
end

-- The key of a message: SPEC is a template ("{fields.site}:{fields.mac}")
-- or a field path ("fields.mac"); without one, the message's dedup_key or
-- else the event's id. At most 1024 bytes, no NUL. Raises naming WHAT.
function M.message_key(spec, msg, ctx, what)
  local key
  if spec and spec:find("{", 1, true) then
    key = M.expand(spec, msg, ctx, what)
  elseif spec then
    key = scalar(at_path(msg, spec))
    if key == nil then
      error(("%s: the message has no %s (a string or a number)"):format(what, spec), 0)
    end
  elseif msg.dedup_key ~= nil and scalar(msg.dedup_key) and scalar(msg.dedup_key) ~= "" then
    key = scalar(msg.dedup_key)
  else
    key = ctx.event
  end
  if key == "" or #key > 1024 or key:find("\0", 1, true) then
    error(("%s: the key must be 1 to 1024 bytes without NUL (got %d bytes)"):format(what, #key), 0)
  end
  return key
end

-- ---- masking -------------------------------------------------------------

local secret_header = { "authorization", "token", "key", "secret", "signature", "password",
                        "cookie" }

local function plain_replace(s, what, with)
  local out, i = {}, 1
  while true do
    local a, b = s:find(what, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = with
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

local function mask_string(s, secrets)
  s = s:gsub("^(https?://)[^/@]+@", "%1****@") -- credentials in a URL
  for _, secret in ipairs(secrets) do
    if #secret >= 4 then
      local host = secret:match("^(https?://[^/]+)/")
      s = plain_replace(s, secret, host and (host .. "/****") or "****")
    end
  end
  return s
end

local function mask_request(r, secrets, key)
  if type(r) ~= "table" then return r end
  if r.sign == "standard-webhooks" and key and type(r.headers) == "table" then
    local h = {}
    for name, value in pairs(r.headers) do h[name] = value end
    h["webhook-id"] = key
    h["webhook-timestamp"] = "(the time of each attempt)"
    h["webhook-signature"] = "v1,(made at each attempt)"
    r = { method = r.method, url = r.url, headers = h, body = r.body, sign = r.sign }
  end
  local out = {}
  for k, v in pairs(r) do
    if k == "headers" and type(v) == "table" then
      local h = {}
      for name, value in pairs(v) do
        local lname = tostring(name):lower()
        local hide = false
        for _, word in ipairs(secret_header) do hide = hide or lname:find(word, 1, true) ~= nil end
        h[name] = hide and "****" or mask_string(tostring(value), secrets)
      end
      out[k] = h
    elseif type(v) == "string" then
      out[k] = mask_string(v, secrets)
    elseif type(v) == "table" then
      out[k] = mask_request(v, secrets)
    else
      out[k] = v
    end
  end
  return out
end

-- A copy of request R fit to show: header values that carry credentials and
-- every secret of the target replaced by ****. A signed request (KEY is its
-- delivery's key) shows the Standard Webhooks headers each attempt adds; a
-- request with `show` shows that instead.
function M.mask(r, secrets, key)
  if type(r) == "table" and type(r.show) == "table" then return mask_request(r.show, secrets) end
  return mask_request(r, secrets, key)
end

return M
