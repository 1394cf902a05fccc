-- Redis Streams: each message is an entry XADDed to a stream (a key, or a
-- template: "mist:{topic}"), capped at `maxlen` entries (approximately,
-- as MAXLEN ~ trims, unless exact = true). The entry holds the fields
-- key, rule, topic, event and message (the message as JSON, or
-- message.raw as is). Messages with the same key go one at a time,
-- oldest first, so a stream holds a key's entries in the order the rules
-- sent them. The client is brume's own (a thread of its own, one
-- connection per target).
local t = require "brume.target"

local M = {
  max_age = "24h",
  options = {
    url = { "string", required = true, secret = true }, -- redis://[user:password@]host:port/db
    stream = { "string", required = true },
    key = { "string" }, -- a field path or a template; default dedup_key, else the event's id
    maxlen = { "integer", default = 100000, min = 0, max = 1000000000 }, -- 0: no cap
    exact = { "boolean", default = false },
  },
}

function M.check(o)
  if not o.url:match("^rediss?://") then
    return "expected redis://[user:password@]host[:port][/db] or rediss://...", "url"
  end
  local problem = o.stream:find("[{}]") and t.template_problem(o.stream)
  if problem then return problem, "stream" end
  if o.stream == "" then return "the stream's key must not be empty", "stream" end
  if o.key then
    problem = t.key_problem(o.key)
    if problem then return problem, "key" end
  end
end

function M.settings(o)
  return { url = o.url, maxlen = tostring(o.maxlen), exact = tostring(o.exact) }
end

function M.request(target, msg, ctx)
  local value = msg.raw and t.raw(msg) or t.json(msg)
  local stream = target.stream
  if stream:find("{", 1, true) then stream = t.expand(stream, msg, ctx, "redis stream") end
  local key = t.message_key(target.key, msg, ctx, "redis stream key")
  local fields = { key = key, rule = ctx.rule, topic = ctx.topic, event = ctx.event }
  if key:find("[\r\n]") then error("redis stream key: no line breaks", 0) end
  return {
    method = "XADD",
    url = "redis-stream:" .. stream,
    headers = fields,
    body = value,
    order = key,
    show = { xadd = { stream = stream, maxlen = target.maxlen, fields = fields, value = value } },
  }
end

return M
