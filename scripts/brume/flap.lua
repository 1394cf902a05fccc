-- brume.flap: flap detection over a sliding count.
--
--   return require "brume.flap" {
--     topics = "device-events",
--     where = { type = { "AP_CONNECTED", "AP_DISCONNECTED" } },  -- the changes
--     key = function(ev) return ev.ap end,
--     count = 4, within = "10m",  -- 4 changes within any 10 minutes: flapping
--     quiet = "15m",              -- over once a key had no change this long (default: within)
--     send = function(ev, action, ctx)   -- "trigger" when it starts, "resolve" when over
--       brume.send("netops", { title = "AP " .. ctx.key .. " is flapping",
--                              dedup_key = "flap:" .. ctx.key, action = action })
--     end,
--   }
--
-- Every event the rule gets (its topics and `where`) is a change of its
-- key. The rule keeps, per key, the times of the last `count` changes (in
-- brume.state, named by rule and key, for `within`): when they all lie
-- within `within`, the key is flapping and `send` gets "trigger" once, with
-- the event and ctx with `key` and `changes`. Each change while flapping
-- arms a timer for `quiet`; when it fires, `send` gets "resolve" with the
-- last change's event (`keep = function(ev)` chooses what of it is kept).
-- `late` defaults to "fire": a resolve that came due while brume was
-- stopped is still sent.
local kit = require "brume.rulekit"

return function(spec)
  kit.check("brume.flap", spec, {
    key = "function!", count = "number!", within = "duration!", quiet = "duration",
    send = "function!", keep = "function",
  })
  if math.type(spec.count) ~= "integer" or spec.count < 2 or spec.count > 1000 then
    error("brume.flap: count: expected a whole number from 2 to 1000", 2)
  end
  local rule = kit.rule(spec, "fire")
  local within = kit.seconds(spec.within)
  local quiet = spec.quiet or spec.within
  local keep = spec.keep or function(ev) return ev end

  function rule.on_event(ev, ctx)
    local k = kit.key(spec.key, ev, ctx)
    if not k then return end
    local name = kit.state_key(ctx, "flap", k)
    local now = ctx.received_at
    local st = brume.state.get(name) or { times = {} }
    local times = {}
    for _, t in ipairs(st.times) do
      if t > now - within then times[#times + 1] = t end
    end
    times[#times + 1] = now
    while #times > spec.count do table.remove(times, 1) end
    st.times = times
    if not st.flapping and #times >= spec.count then
      st.flapping = true
      spec.send(ev, "trigger", kit.context(ctx, { key = k, changes = #times }))
    end
    if st.flapping then brume.timer.set(k, quiet, { ev = keep(ev) }) end
    -- While flapping the mark lasts until the timer says it is over.
    brume.state.set(name, st, not st.flapping and within or nil)
  end

  function rule.on_timer(k, data, ctx)
    brume.state.set(kit.state_key(ctx, "flap", k), nil)
    spec.send(data.ev, "resolve", kit.context(ctx, { key = k }))
  end

  return rule
end
