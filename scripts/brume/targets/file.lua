-- A file of JSON lines, one per message: {"at", "rule", "target", "topic",
-- "event", "message"}. For archiving, for piping to another tool, and for
-- trying brume without an outside account.
local t = require "brume.target"

local M = {
  max_age = "24h",
  options = { path = { "path", required = true } },
}

function M.request(target, msg, ctx)
  return {
    method = "APPEND",
    url = "file:" .. target.path,
    body = t.json({ -- the outbox adds "at", when it writes the line
      rule = ctx.rule,
      target = ctx.target,
      topic = ctx.topic,
      event = ctx.event,
      message = msg,
    }),
  }
end

return M
