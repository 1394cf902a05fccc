-- brume.absence: fire when nothing was heard of a key for a while (a
-- heartbeat, a dead man's switch).
--
--   return require "brume.absence" {
--     topics = "device-events",
--     key = function(ev) return ev.site_id end,  -- what must keep being heard of
--     within = "30m",                -- fire when a key was silent this long
--     send = function(ev, action, ctx)   -- "trigger" when silent, "resolve" when back
--       brume.send("netops", { title = "No events from site " .. ctx.key,
--                              dedup_key = "quiet:" .. ctx.key, action = action })
--     end,
--   }
--
-- Every event of a key arms its timer again for `within`; when one fires
-- the key has been silent that long: `send` gets the last event heard
-- (`keep = function(ev)` chooses what of it is kept; default all, 16 KB at
-- most) and ctx with `key` and `since` (when it was last heard). It fires
-- once per silence; the next event of the key sends "resolve" (unless
-- `resolve = false`) and starts watching again. A key is watched from its
-- first event on. `late` defaults to "fire".
local kit = require "brume.rulekit"

return function(spec)
  kit.check("brume.absence", spec, {
    key = "function!", within = "duration!", send = "function!", keep = "function",
    resolve = "boolean",
  })
  local rule = kit.rule(spec, "fire")
  local keep = spec.keep or function(ev) return ev end

  function rule.on_event(ev, ctx)
    local k = kit.key(spec.key, ev, ctx)
    if not k then return end
    local silent = kit.state_key(ctx, "silent", k)
    local since = brume.state.get(silent)
    if since then
      brume.state.set(silent, nil)
      if spec.resolve ~= false then
        spec.send(ev, "resolve", kit.context(ctx, { key = k, since = since }))
      end
    end
    brume.timer.set(k, spec.within, { ev = keep(ev), seen = ctx.received_at })
  end

  function rule.on_timer(k, data, ctx)
    brume.state.set(kit.state_key(ctx, "silent", k), data.seen)
    spec.send(data.ev, "trigger", kit.context(ctx, { key = k, since = data.seen }))
  end

  return rule
end
