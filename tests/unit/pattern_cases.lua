-- Random patterns and subjects run through string.find, match, gmatch and
-- gsub; returns one text holding every result and error. test_pattern.c runs
-- it once with Lua's own string library and once with brume's budgeted
-- matchers, and the two texts must be equal.
local N = ...
math.randomseed(20261122)

local pieces = {
    "a", "b", "c", "(", ")", " ", "1", ".", "%a", "%d", "%s", "%w", "%A", "%x", "%p", "%l",
    "%u", "%c", "%g", "%%", "%.", "%(", "[abc]", "[^a]", "[a-c]", "[%d_]", "[]]", "[^]a]",
    "[%a-]", "[a-]", "()", "%1", "%2", "%0", "%b()", "%bab", "%f[%w]", "%f[%W]", "%f[a]",
    "*", "+", "-", "?", "$", "^",
    -- malformed on purpose: every error must read the same
    "%", "[", "[a", "[^", "%f", "%fa", "%b", "%b(", "%9", "%z", "[%",
}
local subject_chars = { "a", "b", "c", "(", ")", " ", "1", "2", "_", "-", ".", "A", "\0" }

local function pick(t) return t[math.random(#t)] end

local function pattern()
    local p = {}
    if math.random(6) == 1 then p[1] = "^" end
    for _ = 1, math.random(0, 6) do p[#p + 1] = pick(pieces) end
    return table.concat(p)
end

local function subject()
    local s = {}
    for _ = 1, math.random(0, 12) do s[#s + 1] = pick(subject_chars) end
    return table.concat(s)
end

local out = {}
local function put(...)
    local n = select("#", ...)
    local t = {}
    for i = 1, n do
        local v = select(i, ...)
        t[i] = type(v) == "string" and ("%q"):format(v) or type(v) .. ":" .. tostring(v)
    end
    out[#out + 1] = table.concat(t, "|")
end

local inits = { nil, 1, 2, 0, -1, -3, 5, 13, 100 }
local replacements = {
    "x", "%0", "%1", "%2", "<%1%1>", "%%", "%z", "",
    { a = "A", b = false, ["1"] = 7 },
    function(c) return c end,
    function() return false end,
    function(c, d) return d end,
    function() return {} end,
    function(c) if c == "c" then error("boom", 0) end return "." end,
}

for _ = 1, N do
    local s, p = subject(), pattern()
    local init = inits[math.random(#inits)]
    put(pcall(string.find, s, p, init))
    put(pcall(string.find, s, p, init, true))
    put(pcall(string.match, s, p, init))
    put(pcall(function()
        local r = {}
        for a, b in string.gmatch(s, p, init) do
            r[#r + 1] = tostring(a) .. "," .. tostring(b)
            if #r > 20 then break end
        end
        return table.concat(r, ";")
    end))
    local max = math.random(3) == 1 and math.random(0, 3) or nil
    put(pcall(string.gsub, s, p, pick(replacements), max))
end
-- Arguments of the wrong kind.
put(pcall(string.gsub, "abc", "b", true))
put(pcall(string.find, "abc", {}))
put(pcall(string.match, nil, "a"))
put(pcall(string.gmatch, "abc"))
-- Method calls go through the string metatable to the same functions.
put(("hello world"):find("o w"), ("k=v"):match("(%w+)=(%w+)"), ("aaa"):gsub("a", "b"))
return table.concat(out, "\n")
