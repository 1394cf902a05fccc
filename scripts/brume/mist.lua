-- brume.mist: helpers for the quirks of Mist's webhook payloads.
--
--   local mist = require "brume.mist"
--
-- Mist's vocabularies drift between its alarm definitions, its API spec and
-- what older deployments send: the rogue-AP alarm is `rogue_ap` in one and
-- `rogue-ap-detected` in another; timestamps are integers, floats, strings
-- (mxedge-events) or milliseconds; audits carry `before` and `after` as JSON
-- inside strings; devices are named by any of five fields. These functions
-- absorb the differences so rules need not.

local mist = {}

-- Older payload names of alarm types, by the name the alarm definitions use.
local alarm_aliases = {
  rogue_ap_detected = "rogue_ap",
  rogue_client_detected = "rogue_client",
  honeypot_ssid_detected = "honeypot_ssid",
  device_offline = "device_down",
}

-- The canonical form of an alarm or event type name: lower case, `_` for
-- `-`, and the current name for an old alias. nil for a non-string.
function mist.type_name(name)
  if type(name) ~= "string" then return nil end
  local n = name:lower():gsub("-", "_")
  return alarm_aliases[n] or n
end

-- The canonical type of an event (see mist.type_name).
function mist.alarm_type(ev)
  return mist.type_name(ev.type)
end

-- True when the event's type is NAME, however either is spelled:
-- mist.is(ev, "rogue_ap") matches "rogue_ap" and "rogue-ap-detected".
function mist.is(ev, name)
  local t = mist.alarm_type(ev)
  return t ~= nil and t == mist.type_name(name)
end

-- Seconds since the epoch from a timestamp as Mist writes it: an integer, a
-- float, a string of either ("1655391344.807150"), or milliseconds. Takes an
-- event (its `timestamp`) or the value itself; nil when there is none.
function mist.timestamp(v)
  if type(v) == "table" then v = v.timestamp end
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" then return nil end
  if v > 1e11 then v = v / 1000 end -- milliseconds
  return v
end

-- The event's time as ISO 8601 in UTC ("2026-11-22T10:00:00Z"), or nil.
function mist.time(v)
  local t = mist.timestamp(v)
  if not t then return nil end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

-- A name for the device an event is about, whichever field carries it.
function mist.device_name(ev)
  return ev.device_name or ev.ap_name or ev.hostname
      or (type(ev.hostnames) == "table" and ev.hostnames[1]) or ev.mac or ev.ap
end

-- A MAC address as aa:bb:cc:dd:ee:ff (Mist writes 5c5b35500442).
function mist.mac(s)
  if type(s) ~= "string" then return nil end
  local hex = s:lower():gsub("[^0-9a-f]", "")
  if #hex ~= 12 then return s end
  return (hex:gsub("(%x%x)(%x%x)(%x%x)(%x%x)(%x%x)(%x%x)", "%1:%2:%3:%4:%5:%6"))
end

-- The site an event is about: its name when the payload has one, else its id.
function mist.site(ev)
  return ev.site_name or ev.site_id
end

local function decode_field(v)
  if type(v) == "table" then return v end
  if type(v) ~= "string" or v == "" then return nil end
  local t = brume.json.decode(v)
  if type(t) == "table" then return t end
  return nil
end

local function flatten(prefix, v, out)
  if prefix == "" and type(v) == "table" and next(v) == nil then
    return out -- no state at all (an audit without before or after): no path ""
  end
  if type(v) == "table" and next(v) ~= nil and v ~= brume.null then
    for k, x in pairs(v) do
      flatten(prefix == "" and tostring(k) or (prefix .. "." .. tostring(k)), x, out)
    end
  else
    out[prefix] = v
  end
  return out
end

-- An audit's before and after (JSON inside strings) as tables, or nil.
function mist.audit_states(ev)
  return decode_field(ev.before), decode_field(ev.after)
end

-- What an audit changed: a list of { path = "radio_config.band_24.power",
-- before = ..., after = ... }, sorted by path. JSON null reads as brume.null;
-- a field that is absent on one side reads as nil.
function mist.audit_diff(ev)
  local before, after = mist.audit_states(ev)
  local b, a = flatten("", before or {}, {}), flatten("", after or {}, {})
  local changes = {}
  for path, v in pairs(b) do
    if a[path] ~= v then changes[#changes + 1] = { path = path, before = v, after = a[path] } end
  end
  for path, v in pairs(a) do
    if b[path] == nil then changes[#changes + 1] = { path = path, after = v } end
  end
  table.sort(changes, function(x, y) return x.path < y.path end)
  return changes
end

return mist
