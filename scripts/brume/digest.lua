-- brume.digest: one message per window instead of one per event.
--
--   return require "brume.digest" {
--     topics = "client-join",
--     key = function(ev) return ev.site_name end,  -- a digest per key (default: one)
--     window = "15m",            -- the first event opens it; it closes this long after
--     target = "netops",         -- where the digest message goes
--     title = "Clients joined at %s",              -- the key fills %s
--     line = function(item) return item.mac .. " on " .. item.ssid end,
--   }
--
-- Options: `debounce = true` closes the window `window` after the last
-- event rather than the first, and `max_wait` bounds how long that may go
-- on; `max_items` (default 100, at most 10000) is how many items a digest
-- keeps: it counts them all, keeps the first ones, and the message says
-- "... and N more". `item = function(ev, ctx)` is what an event adds
-- (default: the whole event; 16 KB at most; nil leaves the event out).
-- Items are stored as rows of their own (brume.group.add), not in one state
-- value, so a busy site is not capped by the 64 KB of a state value.
-- `title` may be a function(key, items, ctx); `severity` (default "info")
-- and `fields` (a table, or a function(key, items, ctx)) go into the
-- message. Instead of `target`, `send = function(key, items, ctx, message)`
-- gets the message made as above to send (or change) itself. ctx holds
-- count (every event added), opened_at and due. `late` defaults to "fire":
-- a digest that closed while brume was stopped is still sent.
local kit = require "brume.rulekit"

local function text(items, count, line)
  local lines = {}
  for i, item in ipairs(items) do
    local ok, s = pcall(line, item)
    lines[i] = "- " .. tostring(ok and s or item)
  end
  if count > #items then lines[#lines + 1] = ("... and %d more"):format(count - #items) end
  return table.concat(lines, "\n")
end

return function(spec)
  kit.check("brume.digest", spec, {
    key = "function", window = "duration!", debounce = "boolean", max_wait = "duration",
    max_items = "number", item = "function", target = "string", send = "function",
    title = "any", line = "function", severity = "string", fields = "any",
  })
  if (spec.target == nil) == (spec.send == nil) then
    error("brume.digest: give target, or send = function(key, items, ctx, message)", 2)
  end
  local rule = kit.rule(spec, "fire")
  local opts = { debounce = spec.debounce, max_wait = spec.max_wait, max_items = spec.max_items }
  local item = spec.item or function(ev) return ev end
  local line = spec.line or function(it) return brume.json.encode(it) end

  function rule.on_event(ev, ctx)
    local k = kit.key(spec.key, ev, ctx)
    if not k then return end
    local it = item(ev, ctx)
    if it == nil then return end
    brume.group.add(k, spec.window, it, opts)
  end

  function rule.on_group(k, items, ctx)
    local title = spec.title
    if type(title) == "function" then
      title = title(k, items, ctx)
    elseif title then
      title = tostring(title):format(k)
    else
      title = ("%s: %d event%s"):format(k, ctx.count, ctx.count == 1 and "" or "s")
    end
    local fields = spec.fields
    if type(fields) == "function" then fields = fields(k, items, ctx) end
    local message = {
      title = title,
      text = text(items, ctx.count, line),
      severity = spec.severity or "info",
      fields = fields or { { "events", tostring(ctx.count) },
                           { "since", os.date("!%Y-%m-%d %H:%M UTC", math.floor(ctx.opened_at)) } },
    }
    if spec.send then return spec.send(k, items, ctx, message) end
    brume.send(spec.target, message)
  end

  return rule
end
