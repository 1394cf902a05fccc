-- Webex: a Markdown message to a room (or a person) through the messages
-- API, with a bot's access token.
local t = require "brume.target"

local M = {
  max_age = "1h",
  options = {
    url = { "url", default = "https://webexapis.com/v1/messages" },
    token = { "string", required = true, secret = true },
    room_id = "string",
    to_person_email = "string",
  },
}

function M.check(o)
  if not o.room_id == not o.to_person_email then
    return "webex needs one of room_id and to_person_email"
  end
end

function M.request(target, msg)
  local body = msg.raw and t.raw(msg) or {
    roomId = target.room_id,
    toPersonEmail = target.to_person_email,
    markdown = t.cut(t.no_mentions(t.markdown(msg)), 7000),
    text = t.cut(t.plain(msg), 7000),
  }
  return t.post(target.url, body, { Authorization = "Bearer " .. target.token })
end

return M
