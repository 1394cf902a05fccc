-- Google Chat incoming webhook: a text message (*bold* title, fields,
-- link). The webhook URL carries its key and token.
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = { url = { "url", required = true, secret = true } },
}

function M.request(target, msg)
  local body = msg.raw and t.raw(msg) or { text = t.cut(t.no_mentions(t.markdown(msg, "*")), 4000) }
  return t.post(target.url, body, { ["Content-Type"] = "application/json; charset=UTF-8" })
end

return M
