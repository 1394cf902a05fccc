-- brume.rulekit: what the rule builders brume.holddown, brume.digest,
-- brume.absence and brume.flap share: checking the table a rule file hands
-- them (errors name the rule file's line), the rule keys they pass through,
-- durations, and the names of the state they keep.
local M = {}

local units = { ms = 0.001, s = 1, m = 60, h = 3600, d = 86400 }

-- Seconds in V (a number, or "250ms", "90s", "15m", "24h", "2d", as brume
-- reads durations), or nil when V is not a positive duration.
function M.seconds(v)
  if math.type(v) then return v > 0 and v or nil end
  if type(v) ~= "string" then return nil end
  local n, unit = v:match("^(%d+%.?%d*)(%a*)$")
  local f = n and units[unit == "" and "s" or unit]
  local s = f and tonumber(n) * f
  return s and s > 0 and s or nil
end

-- The rule keys a builder passes through as they are.
local passed = { name = "string", topics = "any", where = "table", description = "string",
                 late = "any" }

local function fail(builder, msg)
  error(builder .. ": " .. msg, 4) -- the rule file's line: fail < check < builder < rule
end

-- Checks SPEC against OPTIONS (name -> "function", "duration", "string",
-- "number", "boolean", "table" or "any"; a trailing "!" when required) and
-- the rule keys above; raises naming the rule file's line.
function M.check(builder, spec, options)
  if type(spec) ~= "table" then fail(builder, "expected a table of options") end
  for k, v in pairs(spec) do
    local want = options[k] or passed[k]
    if not want then
      local names = {}
      for n in pairs(options) do names[#names + 1] = n end
      table.sort(names)
      fail(builder, ("unknown option '%s' (%s, or a rule's name, topics, where, description, "
                     .. "late)"):format(tostring(k), table.concat(names, ", ")))
    end
    want = want:gsub("!$", "")
    local ok = want == "any" or type(v) == want
    if want == "duration" then ok = M.seconds(v) ~= nil end
    if not ok then
      fail(builder, ("%s: expected %s, not %s"):format(k, want == "duration"
        and "a duration (\"90s\", \"15m\", \"24h\")" or "a " .. want, tostring(v)))
    end
  end
  for k, want in pairs(options) do
    if want:sub(-1) == "!" and spec[k] == nil then fail(builder, k .. " is required") end
  end
  if spec.topics == nil then fail(builder, "topics is required") end
end

-- A new rule table holding the keys SPEC passes through; LATE is the
-- builder's default for `late`.
function M.rule(spec, late)
  return { name = spec.name, topics = spec.topics, where = spec.where,
           description = spec.description, late = spec.late or late }
end

-- The key KEY(ev, ctx) gives, as a string, or nil to leave the event alone.
function M.key(fn, ev, ctx)
  if not fn then return "all" end
  local k = fn(ev, ctx)
  if k == nil or k == brume.null or k == "" then return nil end
  return tostring(k)
end

-- The name of this rule's state KIND for KEY: brume.state is shared by all
-- rules, so two rules built by one helper keep theirs apart by rule name.
function M.state_key(ctx, kind, key)
  return ctx.rule .. ":" .. kind .. ":" .. key
end

-- A copy of CTX with the fields of EXTRA: a handler's ctx is shared with
-- the event's other rules, so it is not changed.
function M.context(ctx, extra)
  local c = {}
  for k, v in pairs(ctx) do c[k] = v end
  for k, v in pairs(extra) do c[k] = v end
  return c
end

return M
