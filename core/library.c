#include "library.h"

#include <ctype.h>
#include <float.h>
#include <lauxlib.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define STEPS_PER_CHARGE 64   /* elements or values handled between two charges */
#define BYTES_PER_CHARGE 4096 /* bytes scanned between two charges */
/* A number turned into text (snprintf): the units it costs; and a system
 * call's. */
#define CONVERSION_UNITS 16
#define SYSCALL_UNITS    256

/* Upvalue 1 of every function here. */
struct charger {
    brm_library_charge *charge;
};

/* Work done and not charged yet. A loop charges in groups: a group of
 * steps runs, then is paid for, so a loop stops within one group of the
 * budget's (or the time's) end. */
struct meter {
    lua_State *L;
    brm_library_charge *charge;
    long units;
    size_t bytes;
};

static brm_library_charge *charger_of(lua_State *L) {
    return ((struct charger *)lua_touserdata(L, lua_upvalueindex(1)))->charge;
}

static void meter_init(struct meter *m, lua_State *L) {
    m->L = L;
    m->charge = charger_of(L);
    m->units = 0;
    m->bytes = 0;
}

static void meter_flush(struct meter *m) {
    long units = m->units + (long)(m->bytes / BRM_LIBRARY_SCAN_BYTES);
    m->units = 0;
    m->bytes %= BRM_LIBRARY_SCAN_BYTES;
    if (units > 0) m->charge(m->L, units);
}

static void meter_step(struct meter *m, long units) {
    m->units += units;
    if (m->units >= STEPS_PER_CHARGE) meter_flush(m);
}

static void meter_scan(struct meter *m, size_t bytes) {
    m->bytes += bytes;
    if (m->bytes >= BYTES_PER_CHARGE) meter_flush(m);
}

static void charge(lua_State *L, long units) {
    charger_of(L)(L, units);
}

static long scan_units(size_t bytes) {
    return (long)(bytes / BRM_LIBRARY_SCAN_BYTES);
}

/* Runs Lua's own function (upvalue 2) in this call frame: it sees the same
 * arguments, and its errors name the function as the rule called it. */
static int call_original(lua_State *L) {
    return lua_tocfunction(L, lua_upvalueindex(2))(L);
}

/* ---- charged up front ---------------------------------------------------- */

/* string.char, utf8.char, table.pack, select: a unit per value. (select
 * stands for the copy of every vararg that calling it took.) */
static int per_value(lua_State *L) {
    charge(L, 1 + lua_gettop(L));
    return call_original(L);
}

/* tonumber: the bytes it converts. */
static int scan_first(lua_State *L) {
    charge(L, 1 + (lua_type(L, 1) == LUA_TSTRING ? scan_units(lua_rawlen(L, 1)) : 0));
    return call_original(L);
}

/* The string metatable's arithmetic ("10" + 1): both operands converted. */
static int scan_operands(lua_State *L) {
    long units = 1;
    for (int i = 1; i <= 2; i++)
        if (lua_type(L, i) == LUA_TSTRING) units += scan_units(lua_rawlen(L, i));
    charge(L, units);
    return call_original(L);
}

/* rawequal: two long strings of one length are compared byte by byte. */
static int raw_equal(lua_State *L) {
    long units = 1;
    if (lua_type(L, 1) == LUA_TSTRING && lua_type(L, 2) == LUA_TSTRING &&
        lua_rawlen(L, 1) == lua_rawlen(L, 2))
        units += scan_units(lua_rawlen(L, 1));
    charge(L, units);
    return call_original(L);
}

/* string.rep: Lua's loops N times even when the result is empty, which no
 * allocation pays for; here that is "" at once. What it copies otherwise
 * is charged as it is allocated. */
static int str_rep(lua_State *L) {
    size_t ls, lsep = 0;
    luaL_checklstring(L, 1, &ls);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || (ls == 0 && lsep == 0)) {
        lua_pushliteral(L, "");
        return 1;
    }
    charge(L, 1);
    return call_original(L);
}

/* The format of string.pack, packsize and unpack: Lua reads it up to its
 * first NUL, an option at a time, with no allocation to pay for the
 * reading. Capped, so that one call stays short; a unit per byte. */
static void check_pack_format(lua_State *L) {
    const char *f = luaL_checkstring(L, 1);
    size_t n = strnlen(f, BRM_LIBRARY_MAX_FORMAT + 1);
    if (n > BRM_LIBRARY_MAX_FORMAT)
        luaL_argerror(
            L, 1, lua_pushfstring(L, "format longer than %d bytes", (int)BRM_LIBRARY_MAX_FORMAT));
    charge(L, 1 + (long)n);
}

static int packing(lua_State *L) {
    check_pack_format(L);
    return call_original(L);
}

/* string.unpack also scans its data (option "z" looks for a NUL): what it
 * read, from its first position to the one it returns, is charged after. */
static int unpacking(lua_State *L) {
    check_pack_format(L);
    size_t ld;
    luaL_checklstring(L, 2, &ld);
    lua_Integer pos = luaL_optinteger(L, 3, 1);
    size_t from = pos > 0                              ? (size_t)pos
                  : pos == 0 || pos < -(lua_Integer)ld ? 1
                                                       : ld + (size_t)pos + 1;
    int n = call_original(L);
    size_t to = (size_t)lua_tointeger(L, -1);
    if (to > from) charge(L, scan_units(to - from));
    return n;
}

/* os.date of a UTC format whose conversions are all numbers (%Y %m %d %H
 * %M %S %%), at an integer time or none, in the years 1000 to 9999: the
 * text strftime would give, without it. brume.mist's time() asks for
 * "!%Y-%m-%dT%H:%M:%SZ", and glibc's strftime took about a thousand
 * instructions for each conversion. Pushes it and returns 1, or pushes
 * nothing and returns 0: Lua's os.date answers the rest. */
static int utc_numeric_date(lua_State *L, const char *f, size_t len) {
    char out[128]; /* a conversion of 2 bytes makes 4 at most */
    size_t n = 0;
    if (len == 0 || f[0] != '!' || strcmp(f + 1, "*t") == 0 || len > sizeof(out) / 2) return 0;
    time_t t;
    if (lua_isnoneornil(L, 2)) {
        t = time(NULL);
    } else {
        if (!lua_isinteger(L, 2)) return 0;
        lua_Integer i = lua_tointeger(L, 2);
        t = (time_t)i;
        if ((lua_Integer)t != i) return 0; /* more than time_t holds: Lua's os.date says so */
    }
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year < 1000 - 1900 || tm.tm_year > 9999 - 1900) return 0;
    for (size_t i = 1; i < len; i++) {
        if (f[i] != '%') {
            out[n++] = f[i];
            continue;
        }
        int v, width = 2;
        switch (++i < len ? f[i] : '\0') {
        case 'Y': v = tm.tm_year + 1900, width = 4; break;
        case 'm': v = tm.tm_mon + 1; break;
        case 'd': v = tm.tm_mday; break;
        case 'H': v = tm.tm_hour; break;
        case 'M': v = tm.tm_min; break;
        case 'S': v = tm.tm_sec; break;
        case '%': out[n++] = '%'; continue;
        default: return 0;
        }
        for (int k = width - 1; k >= 0; k--, v /= 10) out[n + (size_t)k] = (char)('0' + v % 10);
        n += (size_t)width;
    }
    lua_pushlstring(L, out, n);
    return 1;
}

/* os.date: a strftime per conversion, each a few times dearer than a
 * number's; the format is capped like pack's. */
static int os_date(lua_State *L) {
    size_t len;
    const char *f = luaL_optlstring(L, 1, "%c", &len);
    if (len > BRM_LIBRARY_MAX_FORMAT)
        luaL_argerror(
            L, 1, lua_pushfstring(L, "format longer than %d bytes", (int)BRM_LIBRARY_MAX_FORMAT));
    long units = 1 + scan_units(len);
    for (const char *p = f; (p = memchr(p, '%', len - (size_t)(p - f))) != NULL; p++)
        units += 4 * CONVERSION_UNITS;
    charge(L, units);
    return utc_numeric_date(L, f, len) ? 1 : call_original(L);
}

/* os.clock: the process's CPU clock is a system call. */
static int os_clock(lua_State *L) {
    charge(L, SYSCALL_UNITS);
    return call_original(L);
}

/* ---- table --------------------------------------------------------------- */

/* What a value must offer to stand for a table (as Lua's table library). */
#define TAB_R 1 /* __index */
#define TAB_W 2 /* __newindex */
#define TAB_L 4 /* __len */

/* Whether the metatable on top of the stack has field KEY. */
static int meta_has(lua_State *L, const char *key) {
    lua_pushstring(L, key);
    int yes = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
    return yes;
}

/* Argument ARG is a table, or has the metamethods WHAT asks for. */
static void check_table(lua_State *L, int arg, int what) {
    if (lua_type(L, arg) == LUA_TTABLE) return;
    int ok = lua_getmetatable(L, arg);
    if (ok) {
        ok = (!(what & TAB_R) || meta_has(L, "__index")) &&
             (!(what & TAB_W) || meta_has(L, "__newindex")) &&
             (!(what & TAB_L) || meta_has(L, "__len"));
        lua_pop(L, 1);
    }
    if (!ok) luaL_checktype(L, arg, LUA_TTABLE);
}

/* #t, read once: __len is the rule's code and need not say the same twice. */
static lua_Integer table_len(lua_State *L, int arg, int what) {
    check_table(L, arg, what | TAB_L);
    return luaL_len(L, arg);
}

static int tab_insert(lua_State *L) {
    struct meter m;
    meter_init(&m, L);
    /* The first free slot (wrapping around as Lua's does). */
    lua_Integer end = (lua_Integer)((lua_Unsigned)table_len(L, 1, TAB_R | TAB_W) + 1u);
    lua_Integer pos = end;
    switch (lua_gettop(L)) {
    case 2: break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)end, 2, "position out of bounds");
        for (lua_Integer i = end; i > pos; i--) { /* t[i] = t[i - 1] */
            meter_step(&m, 1);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    meter_flush(&m);
    return 0;
}

static int tab_remove(lua_State *L) {
    struct meter m;
    meter_init(&m, L);
    lua_Integer size = table_len(L, 1, TAB_R | TAB_W);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size) /* (Lua 5.4.4 names argument 1 here) */
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 1, "position out of bounds");
    lua_geti(L, 1, pos);
    for (; pos < size; pos++) { /* t[pos] = t[pos + 1] */
        meter_step(&m, 1);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    meter_flush(&m);
    return 1;
}

static int tab_move(lua_State *L) {
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
    check_table(L, 1, TAB_R);
    check_table(L, tt, TAB_W);
    if (e >= f) {
        struct meter m;
        meter_init(&m, L);
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        /* Upwards unless that would overwrite what is still to be read. */
        if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
            for (lua_Integer i = 0; i < n; i++) {
                meter_step(&m, 1);
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        } else {
            for (lua_Integer i = n - 1; i >= 0; i--) {
                meter_step(&m, 1);
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        }
        meter_flush(&m);
    }
    lua_pushvalue(L, tt);
    return 1;
}

static void add_field(lua_State *L, struct meter *m, luaL_Buffer *b, lua_Integer i) {
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (%s) at index %I in table for 'concat'", luaL_typename(L, -1),
                   (LUAI_UACINT)i);
    meter_step(m, lua_type(L, -1) == LUA_TNUMBER ? CONVERSION_UNITS : 1);
    luaL_addvalue(b);
}

/* What it copies is charged as the buffer grows; each element is a step,
 * a number a conversion. */
static int tab_concat(lua_State *L) {
    struct meter m;
    luaL_Buffer b;
    lua_Integer last = table_len(L, 1, TAB_R);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    last = luaL_optinteger(L, 4, last);
    meter_init(&m, L);
    luaL_buffinit(L, &b);
    for (; i < last; i++) {
        add_field(L, &m, &b, i);
        luaL_addlstring(&b, sep, lsep);
    }
    if (i == last) add_field(L, &m, &b, i);
    meter_flush(&m);
    luaL_pushresult(&b);
    return 1;
}

static int tab_unpack(lua_State *L) {
    struct meter m;
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = luaL_opt(L, luaL_checkinteger, 3, luaL_len(L, 1));
    if (i > e) return 0;
    lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)i; /* one less than the count */
    if (n >= (unsigned int)INT_MAX || !lua_checkstack(L, (int)(++n)))
        return luaL_error(L, "too many results to unpack");
    meter_init(&m, L);
    for (; i < e; i++) { /* up to e - 1, so that i + 1 cannot overflow */
        meter_step(&m, 1);
        lua_geti(L, 1, i);
    }
    lua_geti(L, 1, e);
    meter_flush(&m);
    return (int)n;
}

/* Whether the value at A goes before the one at B: the order function
 * (argument 2) or <. A and B are absolute indices. */
static int goes_before(lua_State *L, int a, int b) {
    if (lua_isnil(L, 2)) return lua_compare(L, a, b, LUA_OPLT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    lua_call(L, 2, 1);
    int yes = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return yes;
}

/* Moves t[ROOT] down the heap t[1..LAST] to where it belongs. */
static void sift_down(lua_State *L, struct meter *m, lua_Integer root, lua_Integer last) {
    lua_geti(L, 1, root);
    int v = lua_gettop(L);
    for (lua_Integer child; (child = 2 * root) <= last; root = child) {
        lua_geti(L, 1, child);
        if (child < last) { /* the larger of the two children */
            lua_geti(L, 1, child + 1);
            meter_step(m, 1);
            if (goes_before(L, v + 1, v + 2)) {
                lua_remove(L, v + 1);
                child++;
            } else {
                lua_pop(L, 1);
            }
        }
        meter_step(m, 1);
        if (!goes_before(L, v, v + 1)) {
            lua_pop(L, 1);
            break;
        }
        lua_seti(L, 1, root); /* the child moves up */
    }
    lua_seti(L, 1, root);
}

/* A heapsort: O(n log n) steps whatever the order function answers, so an
 * inconsistent one gets some order of the elements, never a loop or a read
 * out of bounds. (Lua's quicksort raises "invalid order function" for some
 * such functions; the manual leaves the result undefined.) */
static int tab_sort(lua_State *L) {
    lua_Integer n = table_len(L, 1, TAB_R | TAB_W);
    if (n > 1) {
        struct meter m;
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
        lua_settop(L, 2);
        luaL_checkstack(L, 8, NULL);
        meter_init(&m, L);
        for (lua_Integer i = n / 2; i >= 1; i--) sift_down(L, &m, i, n);
        for (lua_Integer last = n; last > 1; last--) {
            lua_geti(L, 1, 1);
            lua_geti(L, 1, last);
            lua_seti(L, 1, 1);    /* t[1] = t[last] */
            lua_seti(L, 1, last); /* t[last] = the largest */
            sift_down(L, &m, 1, last - 1);
        }
        meter_flush(&m);
    }
    return 0;
}

/* ---- string.byte and string.format --------------------------------------- */

/* A start position as string.sub reads it: 1-based, negative from the end. */
static size_t start_pos(lua_Integer pos, size_t len) {
    if (pos > 0) return (size_t)pos;
    if (pos == 0 || pos < -(lua_Integer)len) return 1;
    return len + (size_t)pos + 1;
}

static size_t end_pos(lua_State *L, int arg, lua_Integer def, size_t len) {
    lua_Integer pos = luaL_optinteger(L, arg, def);
    if (pos > (lua_Integer)len) return len;
    if (pos >= 0) return (size_t)pos;
    if (pos < -(lua_Integer)len) return 0;
    return len + (size_t)pos + 1;
}

/* A unit per value, charged before any is pushed. */
static int str_byte(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer pi = luaL_optinteger(L, 2, 1);
    size_t from = start_pos(pi, len), to = end_pos(L, 3, pi, len);
    if (from > to) return 0;
    if (to - from >= (size_t)INT_MAX) return luaL_error(L, "string slice too long");
    int n = (int)(to - from) + 1;
    luaL_checkstack(L, n, "string slice too long");
    charge(L, n);
    for (int i = 0; i < n; i++) lua_pushinteger(L, (unsigned char)s[from + (size_t)i - 1]);
    return n;
}

/* The flags each conversion accepts. */
#define FLAGS_FLOAT "-+ #0"
#define FLAGS_HEX   "-#0"
#define FLAGS_INT   "-+ 0"
#define FLAGS_UINT  "-0"
#define FLAGS_CHAR  "-"
#define MAX_SPEC    32 /* "%-099.99d" and a length modifier, with room */
#define MAX_ITEM    120
#define MAX_ITEMF   (110 + DBL_MAX_10_EXP) /* "%99.99f" of the largest double */

static const char *skip_two_digits(const char *s) {
    for (int i = 0; i < 2 && isdigit((unsigned char)*s); i++) s++;
    return s;
}

/* SPEC ("%...x") has only FLAGS, a width of two digits at most and, when
 * PRECISION, a precision of two digits at most. */
static void check_spec(lua_State *L, const char *spec, const char *flags, int precision) {
    const char *p = spec + 1;
    p += strspn(p, flags);
    if (*p != '0') { /* a width does not start with 0 */
        p = skip_two_digits(p);
        if (*p == '.' && precision) p = skip_two_digits(p + 1);
    }
    if (!isalpha((unsigned char)*p)) luaL_error(L, "invalid conversion specification: '%s'", spec);
}

/* Copies the conversion at P (just past its '%') into SPEC as "%...";
 * returns where its conversion letter is. */
static const char *read_spec(lua_State *L, const char *p, char *spec) {
    size_t len = strspn(p, FLAGS_FLOAT "123456789.") + 1;
    if (len >= MAX_SPEC - 10) luaL_error(L, "invalid format (too long)");
    spec[0] = '%';
    memcpy(spec + 1, p, len);
    spec[len + 1] = '\0';
    return p + len - 1;
}

/* "%5d" + "ll" -> "%5lld" */
static void add_length_modifier(char *spec, const char *mod) {
    size_t l = strlen(spec), lm = strlen(mod);
    char conv = spec[l - 1];
    memcpy(spec + l - 1, mod, lm);
    spec[l + lm - 1] = conv;
    spec[l + lm] = '\0';
}

/* %q of a string: a byte at a time, charged as it goes. S is NUL-terminated. */
static void add_quoted(struct meter *m, luaL_Buffer *b, const char *s, size_t len) {
    luaL_addchar(b, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        meter_scan(m, 1);
        if (c == '"' || c == '\\' || c == '\n') {
            luaL_addchar(b, '\\');
            luaL_addchar(b, (char)c);
        } else if (iscntrl(c)) { /* \ddd, three digits when a digit follows */
            char esc[4];
            int n = 0, wide = isdigit((unsigned char)s[i + 1]);
            esc[n++] = '\\';
            if (wide || c >= 100) esc[n++] = (char)('0' + c / 100);
            if (wide || c >= 10) esc[n++] = (char)('0' + c / 10 % 10);
            esc[n++] = (char)('0' + c % 10);
            luaL_addlstring(b, esc, (size_t)n);
            meter_step(m, 1);
        } else {
            luaL_addchar(b, (char)c);
        }
    }
    luaL_addchar(b, '"');
}

/* %q of a float: hexadecimal, so that it reads back exactly. */
static int quote_float(char *buf, lua_Number x) {
    if (x == (lua_Number)HUGE_VAL) return snprintf(buf, MAX_ITEM, "1e9999");
    if (x == -(lua_Number)HUGE_VAL) return snprintf(buf, MAX_ITEM, "-1e9999");
    if (x != x) return snprintf(buf, MAX_ITEM, "(0/0)");
    int n = snprintf(buf, MAX_ITEM, "%" LUA_NUMBER_FRMLEN "a", (LUAI_UACNUMBER)x);
    if (!memchr(buf, '.', (size_t)n)) { /* a locale's radix point reads back as '.' */
        char *point = memchr(buf, localeconv()->decimal_point[0], (size_t)n);
        if (point) *point = '.';
    }
    return n;
}

static void add_literal(lua_State *L, struct meter *m, luaL_Buffer *b, int arg) {
    switch (lua_type(L, arg)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, arg, &len);
        add_quoted(m, b, s, len);
        break;
    }
    case LUA_TNUMBER: {
        char *buf = luaL_prepbuffsize(b, MAX_ITEM);
        int n;
        if (!lua_isinteger(L, arg)) {
            n = quote_float(buf, lua_tonumber(L, arg));
        } else {
            lua_Integer i = lua_tointeger(L, arg);
            n = i == LUA_MININTEGER /* -9223372036854775808 reads back as a float */
                    ? snprintf(buf, MAX_ITEM, "0x%" LUA_INTEGER_FRMLEN "x", (LUAI_UACINT)i)
                    : snprintf(buf, MAX_ITEM, LUA_INTEGER_FMT, (LUAI_UACINT)i);
        }
        luaL_addsize(b, (size_t)n);
        break;
    }
    case LUA_TNIL:
    case LUA_TBOOLEAN:
        luaL_tolstring(L, arg, NULL);
        luaL_addvalue(b);
        break;
    default: luaL_argerror(L, arg, "value has no literal form");
    }
}

/* Formats argument ARG by SPEC, whose conversion letter is CONV. The room
 * for the result is taken before anything is pushed (luaL_Buffer's rule). */
static void add_item(lua_State *L, struct meter *m, luaL_Buffer *b, int arg, char *spec, int conv) {
    char *buf = luaL_prepbuffsize(b, MAX_ITEM);
    const char *flags = FLAGS_INT;
    int n = 0;
    switch (conv) {
    case 'c':
        check_spec(L, spec, FLAGS_CHAR, 0);
        n = snprintf(buf, MAX_ITEM, spec, (int)luaL_checkinteger(L, arg));
        break;
    case 'd':
    case 'i': goto integer;
    case 'u': flags = FLAGS_UINT; goto integer;
    case 'o':
    case 'x':
    case 'X':
        flags = FLAGS_HEX;
    integer : {
        lua_Integer i = luaL_checkinteger(L, arg);
        check_spec(L, spec, flags, 1);
        add_length_modifier(spec, LUA_INTEGER_FRMLEN);
        n = snprintf(buf, MAX_ITEM, spec, (LUAI_UACINT)i);
        break;
    }
    case 'a':
    case 'A':
        check_spec(L, spec, FLAGS_FLOAT, 1);
        add_length_modifier(spec, LUA_NUMBER_FRMLEN);
        n = snprintf(buf, MAX_ITEM, spec, (LUAI_UACNUMBER)luaL_checknumber(L, arg));
        break;
    case 'f':
    case 'e':
    case 'E':
    case 'g':
    case 'G': {
        lua_Number x = luaL_checknumber(L, arg);
        int size = conv == 'f' ? MAX_ITEMF : MAX_ITEM;
        check_spec(L, spec, FLAGS_FLOAT, 1);
        add_length_modifier(spec, LUA_NUMBER_FRMLEN);
        buf = luaL_prepbuffsize(b, (size_t)size);
        n = snprintf(buf, (size_t)size, spec, (LUAI_UACNUMBER)x);
        break;
    }
    case 'p': {
        const void *p = lua_topointer(L, arg);
        check_spec(L, spec, FLAGS_CHAR, 0);
        if (!p) { /* printf's %p of NULL is not portable */
            p = "(null)";
            spec[strlen(spec) - 1] = 's';
        }
        n = snprintf(buf, MAX_ITEM, spec, p);
        break;
    }
    case 'q':
        if (spec[2] != '\0') luaL_error(L, "specifier '%%q' cannot have modifiers");
        add_literal(L, m, b, arg);
        return;
    case 's': {
        size_t len;
        const char *s = luaL_tolstring(L, arg, &len);
        if (spec[2] == '\0') { /* no modifiers: the whole string */
            luaL_addvalue(b);
            return;
        }
        luaL_argcheck(L, len == strlen(s), arg, "string contains zeros");
        check_spec(L, spec, FLAGS_CHAR, 1);
        if (!strchr(spec, '.') && len >= 100) { /* too long for a width to matter */
            luaL_addvalue(b);
            return;
        }
        n = snprintf(buf, MAX_ITEM, spec, s);
        lua_pop(L, 1);
        break;
    }
    default: luaL_error(L, "invalid conversion '%s' to 'format'", spec);
    }
    luaL_addsize(b, (size_t)n);
}

/* string.format, with Lua 5.4's results and errors: CONVERSION_UNITS per
 * conversion, and the bytes of the format and of %q's strings as they are
 * read. */
static int str_format(lua_State *L) {
    int top = lua_gettop(L), arg = 1;
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len), *end = p + len;
    struct meter m;
    luaL_Buffer b;
    meter_init(&m, L);
    luaL_buffinit(L, &b);
    while (p < end) {
        const char *pct = memchr(p, '%', (size_t)(end - p));
        const char *text_end = pct ? pct : end;
        while (p < text_end) { /* plain text, a piece at a time */
            size_t n = (size_t)(text_end - p);
            if (n > BYTES_PER_CHARGE) n = BYTES_PER_CHARGE;
            luaL_addlstring(&b, p, n);
            meter_scan(&m, n);
            p += n;
        }
        if (!pct) break;
        p = pct + 1; /* at the end, the string's NUL: an invalid conversion */
        if (*p == '%') {
            meter_step(&m, 1);
            luaL_addchar(&b, '%');
            p++;
            continue;
        }
        meter_step(&m, CONVERSION_UNITS);
        if (++arg > top) return luaL_argerror(L, arg, "no value");
        char spec[MAX_SPEC];
        p = read_spec(L, p, spec);
        add_item(L, &m, &b, arg, spec, *p++);
    }
    meter_flush(&m);
    luaL_pushresult(&b);
    return 1;
}

/* ---- utf8 ---------------------------------------------------------------- */

#define MAX_UNICODE 0x10FFFFu
#define MAX_UTF     0x7FFFFFFFu /* what a lax decode accepts: 31 bits, 6 bytes */

static int is_cont(const char *p) {
    return (*p & 0xC0) == 0x80;
}

/* Decodes the sequence at S (a NUL follows the string): its length in
 * bytes, or 0 when it is not valid UTF-8 (strict: not a Unicode scalar). */
static size_t decode(const char *s, unsigned long *cp, int strict) {
    static const unsigned long least[] = { 0, 0x80, 0x800, 0x10000, 0x200000, 0x4000000 };
    unsigned char c = (unsigned char)s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int more = 0; /* continuation bytes the lead byte announces */
    while (more < 6 && (c & (0x40 >> more))) more++;
    if (more == 0 || more > 5) return 0; /* a continuation byte, or 0xFE, 0xFF */
    unsigned long v = c & (0x3Fu >> more);
    for (int i = 1; i <= more; i++) {
        if (!is_cont(s + i)) return 0;
        v = (v << 6) | ((unsigned char)s[i] & 0x3Fu);
    }
    if (v < least[more] || v > MAX_UTF) return 0; /* overlong */
    if (strict && (v > MAX_UNICODE || (v >= 0xD800 && v <= 0xDFFF))) return 0;
    *cp = v;
    return (size_t)more + 1;
}

/* A position as utf8's functions read it: negative from the end. */
static lua_Integer rel_pos(lua_Integer pos, size_t len) {
    if (pos >= 0) return pos;
    if ((size_t)0 - (size_t)pos > len) return 0;
    return (lua_Integer)len + pos + 1;
}

static int utf_len(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer i = rel_pos(luaL_optinteger(L, 2, 1), len);
    lua_Integer j = rel_pos(luaL_optinteger(L, 3, -1), len);
    int lax = lua_toboolean(L, 4);
    luaL_argcheck(L, 1 <= i && i - 1 <= (lua_Integer)len, 2, "initial position out of bounds");
    luaL_argcheck(L, j - 1 < (lua_Integer)len, 3, "final position out of bounds");
    struct meter m;
    meter_init(&m, L);
    lua_Integer n = 0;
    for (i--, j--; i <= j; n++) {
        unsigned long cp;
        size_t k = decode(s + i, &cp, !lax);
        if (!k) {
            meter_flush(&m);
            luaL_pushfail(L);
            lua_pushinteger(L, i + 1);
            return 2;
        }
        i += (lua_Integer)k;
        meter_scan(&m, k);
    }
    meter_flush(&m);
    lua_pushinteger(L, n);
    return 1;
}

static int utf_codepoint(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer i = rel_pos(luaL_optinteger(L, 2, 1), len);
    lua_Integer j = rel_pos(luaL_optinteger(L, 3, i), len);
    int lax = lua_toboolean(L, 4);
    luaL_argcheck(L, i >= 1, 2, "out of bounds");
    luaL_argcheck(L, j <= (lua_Integer)len, 3, "out of bounds");
    if (i > j) return 0;
    if (j - i >= INT_MAX) return luaL_error(L, "string slice too long");
    luaL_checkstack(L, (int)(j - i) + 1, "string slice too long");
    struct meter m;
    meter_init(&m, L);
    int n = 0;
    for (const char *p = s + i - 1, *e = s + j; p < e; n++) {
        unsigned long cp;
        size_t k = decode(p, &cp, !lax);
        if (!k) return luaL_error(L, "invalid UTF-8 code");
        meter_step(&m, 1);
        lua_pushinteger(L, (lua_Integer)cp);
        p += k;
    }
    meter_flush(&m);
    return n;
}

static int utf_offset(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    lua_Integer i = rel_pos(luaL_optinteger(L, 3, n >= 0 ? 1 : (lua_Integer)len + 1), len);
    luaL_argcheck(L, 1 <= i && i - 1 <= (lua_Integer)len, 3, "position out of bounds");
    struct meter m;
    meter_init(&m, L);
    i--;
    if (n == 0) { /* back to the start of the character at i */
        for (; i > 0 && is_cont(s + i); i--) meter_scan(&m, 1);
    } else if (is_cont(s + i)) {
        return luaL_error(L, "initial position is a continuation byte");
    } else if (n < 0) {
        for (; n < 0 && i > 0; n++) /* to the start of the previous character */
            do {
                i--;
                meter_scan(&m, 1);
            } while (i > 0 && is_cont(s + i));
    } else {
        for (n--; n > 0 && i < (lua_Integer)len; n--) /* past this character */
            do {
                i++;
                meter_scan(&m, 1);
            } while (is_cont(s + i)); /* stops at the final NUL */
    }
    meter_flush(&m);
    if (n == 0)
        lua_pushinteger(L, i + 1);
    else
        luaL_pushfail(L);
    return 1;
}

/* The iterator utf8.codes returns: from the byte after the last code
 * (continuation bytes skipped, each charged), the next one. */
static int utf_next(lua_State *L, int strict) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Unsigned at = (lua_Unsigned)lua_tointeger(L, 2);
    struct meter m;
    meter_init(&m, L);
    if (at < len)
        for (; is_cont(s + at); at++) meter_scan(&m, 1);
    meter_flush(&m);
    if (at >= len) return 0; /* also when the control value was negative */
    unsigned long cp;
    if (!decode(s + at, &cp, strict)) return luaL_error(L, "invalid UTF-8 code");
    lua_pushinteger(L, (lua_Integer)at + 1);
    lua_pushinteger(L, (lua_Integer)cp);
    return 2;
}

static int utf_next_strict(lua_State *L) {
    return utf_next(L, 1);
}

static int utf_next_lax(lua_State *L) {
    return utf_next(L, 0);
}

/* Upvalues 2 and 3: the strict and the lax iterator. */
static int utf_codes(lua_State *L) {
    int lax = lua_toboolean(L, 2);
    luaL_checkstring(L, 1);
    lua_pushvalue(L, lua_upvalueindex(lax ? 3 : 2));
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
}

/* ---- opening ------------------------------------------------------------- */

static const struct priced {
    const char *lib, *name;
    lua_CFunction fn;
    int wraps; /* runs Lua's function after charging (upvalue 2) */
} priced[] = {
    { "_G", "tonumber", scan_first, 1 },  { "_G", "select", per_value, 1 },
    { "_G", "rawequal", raw_equal, 1 },   { "string", "byte", str_byte, 0 },
    { "string", "char", per_value, 1 },   { "string", "format", str_format, 0 },
    { "string", "rep", str_rep, 1 },      { "string", "pack", packing, 1 },
    { "string", "packsize", packing, 1 }, { "string", "unpack", unpacking, 1 },
    { "table", "concat", tab_concat, 0 }, { "table", "insert", tab_insert, 0 },
    { "table", "remove", tab_remove, 0 }, { "table", "move", tab_move, 0 },
    { "table", "unpack", tab_unpack, 0 }, { "table", "sort", tab_sort, 0 },
    { "table", "pack", per_value, 1 },    { "utf8", "char", per_value, 1 },
    { "utf8", "len", utf_len, 0 },        { "utf8", "codepoint", utf_codepoint, 0 },
    { "utf8", "offset", utf_offset, 0 },  { "os", "date", os_date, 1 },
    { "os", "clock", os_clock, 1 },
};

/* Pushes a charger for CHARGE. [-0, +1] */
static void push_charger(lua_State *L, brm_library_charge *charge_fn) {
    struct charger *c = lua_newuserdatauv(L, sizeof(*c), 0);
    c->charge = charge_fn;
}

void brm_library_open(lua_State *L, const char *name, int idx, brm_library_charge *charge_fn) {
    idx = lua_absindex(L, idx);
    push_charger(L, charge_fn);
    int c = lua_gettop(L);
    for (size_t i = 0; i < sizeof(priced) / sizeof(priced[0]); i++) {
        const struct priced *p = &priced[i];
        if (strcmp(p->lib, name) != 0) continue;
        lua_pushvalue(L, c);
        if (p->wraps) {
            lua_getfield(L, idx, p->name);
            lua_pushcfunction(L, lua_tocfunction(L, -1));
            lua_remove(L, -2);
        }
        lua_pushcclosure(L, p->fn, p->wraps ? 2 : 1);
        lua_setfield(L, idx, p->name);
    }
    if (strcmp(name, "utf8") == 0) {
        lua_pushvalue(L, c);
        lua_pushvalue(L, c);
        lua_pushcclosure(L, utf_next_strict, 1);
        lua_pushvalue(L, c);
        lua_pushcclosure(L, utf_next_lax, 1);
        lua_pushcclosure(L, utf_codes, 3);
        lua_setfield(L, idx, "codes");
    }
    lua_pop(L, 1);
}

void brm_library_open_string_meta(lua_State *L, int idx, brm_library_charge *charge_fn) {
    static const char *const arith[] = { "__add", "__sub", "__mul",  "__mod",
                                         "__pow", "__div", "__idiv", "__unm" };
    idx = lua_absindex(L, idx);
    push_charger(L, charge_fn);
    for (size_t i = 0; i < sizeof(arith) / sizeof(arith[0]); i++) {
        if (lua_getfield(L, idx, arith[i]) != LUA_TFUNCTION || !lua_tocfunction(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        lua_CFunction f = lua_tocfunction(L, -1);
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushcfunction(L, f);
        lua_pushcclosure(L, scan_operands, 2);
        lua_setfield(L, idx, arith[i]);
    }
    lua_pop(L, 1);
}
