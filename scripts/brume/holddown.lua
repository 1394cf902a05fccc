-- brume.holddown: raise when a condition has held for a while (Prometheus's
-- `for`), resolve when it clears.
--
--   return require "brume.holddown" {
--     topics = "device-events",
--     key = function(ev) return ev.ap or ev.mac end,   -- what the condition is about
--     down = function(ev) return ev.type == "AP_DISCONNECTED" end,
--     up = function(ev) return ev.type == "AP_CONNECTED" end,  -- default: not down(ev)
--     after = "5m",      -- raise when it is still down this long after it went down
--     stable = "2m",     -- optional: resolve only once it has stayed up this long
--     send = function(ev, action, ctx)   -- action: "trigger", then "resolve"
--       brume.send("oncall", { title = "AP down", dedup_key = "ap:" .. ctx.key,
--                              action = action })
--     end,
--   }
--
-- A condition that clears within `after` sends nothing at all; a key that
-- goes down again while waiting to be stable stays raised, without a second
-- trigger. `send` gets the event that went down (for "trigger") or came up
-- (for "resolve"), and a copy of the handler's ctx with `key` and `since`
-- (when it went down). `keep = function(ev) return {...} end` chooses what
-- of the down event is kept until the trigger (default: all of it; 16 KB at
-- most). The wait is a timer named by the key, the raised mark a state key
-- named by the rule and key: both durable. `late` defaults to "fire": a
-- trigger that came due while brume was stopped is still sent.
local kit = require "brume.rulekit"

return function(spec)
  kit.check("brume.holddown", spec, {
    key = "function!", down = "function!", up = "function", after = "duration!",
    stable = "duration", send = "function!", keep = "function",
  })
  local rule = kit.rule(spec, "fire")
  local down, send = spec.down, spec.send
  local up = spec.up or function(ev, ctx) return not down(ev, ctx) end
  local keep = spec.keep or function(ev) return ev end

  function rule.on_event(ev, ctx)
    local k = kit.key(spec.key, ev, ctx)
    if not k then return end
    local raised = kit.state_key(ctx, "raised", k)
    if down(ev, ctx) then
      if brume.state.get(raised) then
        brume.timer.cancel(k) -- down again while waiting to be stable: it stays raised
      elseif not brume.timer.get(k) then
        brume.timer.set(k, spec.after, { phase = "raise", ev = keep(ev), since = ctx.received_at })
      end
    elseif up(ev, ctx) then
      local since = brume.state.get(raised)
      if not since then
        brume.timer.cancel(k) -- cleared within `after`: nothing at all
      elseif not spec.stable then
        brume.state.set(raised, nil)
        send(ev, "resolve", kit.context(ctx, { key = k, since = since }))
      elseif not brume.timer.get(k) then
        brume.timer.set(k, spec.stable, { phase = "clear", ev = keep(ev), since = since })
      end
    end
  end

  function rule.on_timer(k, data, ctx)
    local raised = kit.state_key(ctx, "raised", k)
    local c = kit.context(ctx, { key = k, since = data.since })
    if data.phase == "raise" then
      brume.state.set(raised, data.since)
      send(data.ev, "trigger", c)
    else
      brume.state.set(raised, nil)
      send(data.ev, "resolve", c)
    end
  end

  return rule
end
