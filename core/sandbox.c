#include "sandbox.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "embedded.h"
#include "pattern.h"
#include "snapshot.h"

/* How many instructions pass between two looks at the budget; where the
 * time is polled (see "the CPU-time backstop"), how many looks between two
 * looks at the clock. */
#define HOOK_STEP  1000
#define CLOCK_STEP 8
/* Largest Lua source file read from disk. */
#define MAX_SOURCE (4u << 20)
/* Source bytes one unit of compiling stands for, and the pieces the
 * compiler is fed (each charged before it is read). */
#define SOURCE_BYTES_PER_UNIT 4
#define SOURCE_PIECE          4096
/* Once a call is stopped, the allocator refuses it anything larger: the C
 * function it is in fails at its next growth, while the small strings of
 * the error that ends the call still fit. */
#define STOPPED_ALLOC 1024

/* Why a call was stopped for good. */
enum stop { STOP_NONE, STOP_BUDGET, STOP_TIME, STOP_ABORT };

struct brm_sandbox {
    lua_State *L;
    size_t used, limit;
    size_t ceiling; /* when set, the VM holds no more, user code or not */
    int enforce;    /* >0 while user code runs or compiles: the cap applies */
    int calls;      /* >0 inside brm_sandbox_call: the budget and the time apply */
    int limit_hit;  /* the last refusal came from the cap */
    long budget;    /* instructions per outermost call */
    long left;      /* of the current call */
    enum stop stopped;
    char why[256]; /* what brm_sandbox_abort said */
    char stop_file[256];
    int stop_line;                 /* where the call was stopped */
    volatile sig_atomic_t time_up; /* set by the ticker's signal handler */
    const _Atomic int *cancel;     /* see brm_sandbox_set_cancel; NULL: none */
    uint64_t time_limit;           /* CPU ns per outermost call; 0: none */
    unsigned long start_tick, limit_ticks;
    struct brm_sandbox *outside; /* the call this thread ran when this one started */
    int polling;                 /* no ticker in this thread: the clock is read */
    uint64_t deadline;           /* when polling: CPU ns at which the call ends */
    unsigned hooks;
    char mem_file[256]; /* where the memory cap was first hit in this call */
    int mem_line;
    char *scripts_dir, *rules_dir;
    struct brm_snapshot *files; /* what user code is read through (a reference) */
};

/* Registry keys: addresses of these statics. */
static const char LIBRARY_KEY, ENV_MT_KEY, LOADED_KEY, PROXIES_KEY, PROXY_OF_KEY;
/* Marks a module that is being loaded, to catch circular requires. */
static const char LOADING;

/* Notes where user code runs now into FILE and *LINE: no message handler
 * runs for a memory error, and a stopped call's last error need not come
 * from where it was stopped. Only reads the call stack (no allocation),
 * which is safe from inside the allocator. */
static void note_position(struct brm_sandbox *sb, char *file, size_t size, int *line) {
    lua_Debug ar;
    file[0] = '\0';
    *line = 0;
    for (int level = 0; sb->L && lua_getstack(sb->L, level, &ar); level++) {
        if (!lua_getinfo(sb->L, "Sl", &ar) || ar.currentline <= 0) continue;
        snprintf(file, size, "%s", ar.short_src);
        *line = ar.currentline;
        return;
    }
}

/* ---- stopping a call ---------------------------------------------------- */

static void count_hook(lua_State *L, lua_Debug *ar);

/* From now on every instruction raises: a pcall in the rule can catch one
 * error but not get another instruction done. An abort overrides another
 * reason (the C code that aborts knows the call's outcome cannot stand);
 * nothing overrides an abort. */
static void stop(struct brm_sandbox *sb, enum stop why) {
    if (sb->stopped == STOP_ABORT || (sb->stopped && why != STOP_ABORT)) return;
    sb->stopped = why;
    note_position(sb, sb->stop_file, sizeof(sb->stop_file), &sb->stop_line);
    lua_sethook(sb->L, count_hook, LUA_MASKCOUNT, 1);
}

/* Pushes why the call was stopped, e.g. "instruction budget exceeded
 * (1000000 instructions)". [-0, +1] */
static const char *push_stopped(lua_State *L, const struct brm_sandbox *sb) {
    switch (sb->stopped) {
    case STOP_TIME:
        return lua_pushfstring(L, "time limit exceeded (%f s)", (double)sb->time_limit / 1e9);
    case STOP_ABORT: return lua_pushstring(L, sb->why);
    default:
        return lua_pushfstring(L, "instruction budget exceeded (%I instructions)",
                               (LUAI_UACINT)sb->budget);
    }
}

/* ---- the CPU-time backstop ---------------------------------------------- */

/*
 * limits.time is CPU time, and reading a thread's CPU clock is a system
 * call (no vDSO serves it): too dear for every rule call. So each thread
 * that runs user code has a timer on its own CPU clock that ticks every
 * TICK_NS of CPU the thread uses, with a signal that this thread handles:
 * the handler counts the tick and, when the call in progress has seen more
 * ticks than its limit holds, marks it out of time and sets the count hook
 * to fire at the next instruction (lua_sethook may be called from a signal
 * handler; lua.c stops a script on SIGINT so). C code sees the mark where
 * it charges and where it allocates. A call costs no system call, an idle
 * thread gets no signal, and a call ends within about two ticks of its
 * limit whatever it does between two hooks: instructions that compare long
 * strings, C functions. Only one step that cannot be interrupted (one
 * instruction, one C call between two charges; the memory cap bounds
 * either) can add to that. Where no such timer can be had, each call reads
 * the clock instead: at its start, then every CLOCK_STEP hooks, at every
 * charge and at every large allocation.
 */
#define TICK_NS (4 * 1000 * 1000)

struct ticker {
    int state; /* 0: not tried in this thread, 1: ticking, -1: unavailable */
    timer_t timer;
    _Atomic unsigned long ticks;
    struct brm_sandbox *_Atomic running; /* the outermost call in progress */
};
/* initial-exec: the handler must not be the first to touch it. */
static _Thread_local struct ticker ticker __attribute__((tls_model("initial-exec")));
static pthread_once_t tick_once = PTHREAD_ONCE_INIT;
static pthread_key_t tick_key; /* deletes a thread's timer when it ends */
static int tick_signal;        /* 0 until the handler is in place */

static void on_tick(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    int saved = errno;
    /* A late signal stands for the ticks it missed. */
    unsigned long n = 1 + (si->si_overrun > 0 ? (unsigned long)si->si_overrun : 0);
    unsigned long now = atomic_fetch_add_explicit(&ticker.ticks, n, memory_order_relaxed) + n;
    struct brm_sandbox *sb = atomic_load_explicit(&ticker.running, memory_order_relaxed);
    /* More than limit_ticks ticks since the call began (see brm_sandbox_new). */
    if (sb && !sb->time_up && now - sb->start_tick > sb->limit_ticks) {
        sb->time_up = 1;
        lua_sethook(sb->L, count_hook, LUA_MASKCOUNT, 1);
    }
    errno = saved;
}

static void end_ticker(void *arg) {
    (void)arg;
    if (ticker.state > 0) timer_delete(ticker.timer);
    ticker.state = 0;
}

static void install_tick_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_tick;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (pthread_key_create(&tick_key, end_ticker) == 0 && sigaction(SIGRTMIN, &sa, NULL) == 0)
        tick_signal = SIGRTMIN;
}

/* Starts this thread's ticker, once; leaves state -1 when it cannot. */
static void start_ticker(void) {
    ticker.state = -1;
    pthread_once(&tick_once, install_tick_handler);
    if (!tick_signal) return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, tick_signal);
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = tick_signal;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    if (pthread_sigmask(SIG_UNBLOCK, &set, NULL) != 0 ||
        timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &ticker.timer) != 0)
        return;
    struct itimerspec every = { { 0, TICK_NS }, { 0, TICK_NS } };
    if (timer_settime(ticker.timer, 0, &every, NULL) != 0) {
        timer_delete(ticker.timer);
        return;
    }
    pthread_setspecific(tick_key, &ticker);
    ticker.state = 1;
}

static int cancelled(const struct brm_sandbox *sb) {
    return sb->cancel && atomic_load_explicit(sb->cancel, memory_order_relaxed);
}

void brm_sandbox_set_cancel(struct brm_sandbox *sb, const _Atomic int *flag) {
    sb->cancel = flag;
}

/* The clock of an outermost call starts: no system call once the thread
 * ticks. */
static void start_clock(struct brm_sandbox *sb) {
    sb->time_up = cancelled(sb);
    sb->polling = 0;
    if (!sb->time_limit) return;
    if (ticker.state == 0) start_ticker();
    if (ticker.state < 0) {
        sb->polling = 1;
        sb->deadline = brm_time_cpu_ns() + sb->time_limit;
        return;
    }
    sb->start_tick = atomic_load(&ticker.ticks);
    sb->outside = atomic_exchange(&ticker.running, sb);
}

static void stop_clock(struct brm_sandbox *sb) {
    if (sb->time_limit && !sb->polling) atomic_store(&ticker.running, sb->outside);
}

static int out_of_time(const struct brm_sandbox *sb) {
    return sb->time_up || cancelled(sb) || (sb->polling && brm_time_cpu_ns() > sb->deadline);
}

/* ---- memory -------------------------------------------------------------- */

/* Allocating is charged to the budget as the work of filling what was
 * allocated: the count hook sees one instruction in a ".." of two long
 * strings, or in a string.rep, whatever they copy. A call that runs out
 * fails at its next instruction (lua_sethook may be called from anywhere)
 * or here, when what it asks for is large. Returns 0 to refuse. */
static int charge_allocation(struct brm_sandbox *sb, size_t bytes) {
    if (!sb->stopped) {
        sb->left -= (long)(bytes / BRM_SANDBOX_BYTES_PER_UNIT);
        if (sb->budget > 0 && sb->left <= 0)
            stop(sb, STOP_BUDGET);
        else if (sb->time_up || (sb->polling && bytes >= (64u << 10) && out_of_time(sb)))
            stop(sb, STOP_TIME);
        else
            return 1;
    }
    return bytes <= STOPPED_ALLOC;
}

static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct brm_sandbox *sb = ud;
    if (!ptr) osize = 0; /* then osize tells the object's type, not a size */
    if (nsize == 0) {
        free(ptr);
        sb->used -= osize;
        return NULL;
    }
    if (nsize > osize && sb->ceiling && sb->used + (nsize - osize) > sb->ceiling)
        return NULL; /* Lua collects garbage, retries, then raises LUA_ERRMEM */
    if (nsize > osize && sb->enforce > 0) {
        if (sb->limit && sb->used + (nsize - osize) > sb->limit) {
            if (!sb->limit_hit)
                note_position(sb, sb->mem_file, sizeof(sb->mem_file), &sb->mem_line);
            sb->limit_hit = 1;
            return NULL; /* Lua collects garbage, retries, then raises LUA_ERRMEM */
        }
        if (sb->calls > 0 && !charge_allocation(sb, nsize - osize)) return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p) return NULL;
    sb->used = sb->used - osize + nsize;
    return p;
}

struct brm_sandbox *brm_sandbox_of(lua_State *L) {
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* ---- read-only proxies -------------------------------------------------- */

static int ro_newindex(lua_State *L) {
    return luaL_error(L, "attempt to modify read-only table '%s' (field '%s')",
                      lua_tostring(L, lua_upvalueindex(1)), luaL_tolstring(L, 2, NULL));
}

/* Pushes the proxy made before of the table at IDX (absolute) and returns
 * 1, or pushes nothing and returns 0. One proxy per table, so proxies
 * compare equal when their tables do. */
static int proxy_made(lua_State *L, int idx) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXY_OF_KEY);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 2);
    return 0;
}

/* __index of a proxy over a table that holds tables: wraps what it returns
 * (the proxy made before, when there is one: `brume.json` in every call of
 * a rule costs a lookup, not a name). */
static int ro_index(lua_State *L) {
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TTABLE && !proxy_made(L, 3)) {
        const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "?";
        const char *name = lua_pushfstring(L, "%s.%s", lua_tostring(L, lua_upvalueindex(2)), key);
        brm_sandbox_push_readonly(L, 3, name);
    }
    return 1;
}

static int ro_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, lua_upvalueindex(1)));
    return 1;
}

/* next() over the real table, handing out proxies for table values. */
static int ro_next(lua_State *L) {
    lua_settop(L, 2);
    if (!lua_next(L, lua_upvalueindex(1))) return 0;
    if (lua_type(L, -1) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, -1, lua_tostring(L, lua_upvalueindex(2)));
        lua_replace(L, -2);
    }
    return 2;
}

static int ro_pairs(lua_State *L) {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__next");
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int holds_tables(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pop(L, 2);
            return 1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static void push_proxy(lua_State *L, int idx, const char *name, int shallow);

void brm_sandbox_push_readonly(lua_State *L, int idx, const char *name) {
    push_proxy(L, idx, name, 0);
}

/* A proxy of the table at IDX. SHALLOW (the standard libraries, whose
 * fields are functions and stay so) looks fields up in the table itself;
 * otherwise every lookup goes through ro_index, which wraps any table it
 * hands out, including one added to the module later. */
static void push_proxy(lua_State *L, int idx, const char *name, int shallow) {
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8, NULL);
    if (proxy_made(L, idx)) return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXY_OF_KEY);
    lua_newtable(L); /* the proxy */
    lua_createtable(L, 0, 7);
    lua_pushstring(L, name);
    int nameidx = lua_gettop(L);
    if (!shallow || holds_tables(L, idx)) {
        lua_pushvalue(L, idx);
        lua_pushvalue(L, nameidx);
        lua_pushcclosure(L, ro_index, 2);
    } else {
        lua_pushvalue(L, idx); /* plain lookups need no C call */
    }
    lua_setfield(L, -3, "__index");
    lua_pushvalue(L, nameidx);
    lua_pushcclosure(L, ro_newindex, 1);
    lua_setfield(L, -3, "__newindex");
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, ro_len, 1);
    lua_setfield(L, -3, "__len");
    lua_pushvalue(L, idx);
    lua_pushvalue(L, nameidx);
    lua_pushcclosure(L, ro_next, 2);
    lua_setfield(L, -3, "__next");
    lua_pushcfunction(L, ro_pairs);
    lua_setfield(L, -3, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -3, "__metatable");
    lua_pop(L, 1); /* name */
    lua_setmetatable(L, -2);
    /* Remember it: table -> proxy (weak), and the proxy as one of ours. */
    lua_pushvalue(L, idx);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    lua_remove(L, -2);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_pushvalue(L, -2);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

static int is_proxy(lua_State *L, int idx) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_pushvalue(L, idx);
    int yes = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return yes;
}

/* ---- the safe library --------------------------------------------------- */

static int api_setmetatable(lua_State *L) {
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    /* A finalizer would run whenever the collector pleases, outside any
     * budget: a looping __gc could hang the worker. */
    if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "__gc metamethods are not allowed in rules");
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int api_rawset(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    if (is_proxy(L, 1)) return luaL_error(L, "attempt to modify a read-only table");
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

static int api_collectgarbage(lua_State *L) {
    const char *opt = luaL_optstring(L, 1, "collect");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage: only \"count\" is allowed in rules");
    int kb = lua_gc(L, LUA_GCCOUNT), b = lua_gc(L, LUA_GCCOUNTB);
    lua_pushnumber(L, (lua_Number)kb + (lua_Number)b / 1024);
    return 1;
}

/*
 * xpcall(f, handler, ...). Lua calls a message handler before unwinding,
 * and when the error comes from the budget's hook, hooks are still off at
 * that point: a handler that loops would run forever. Rules have no debug
 * library, so all a handler can do is turn the error value into another;
 * this xpcall unwinds first (a plain pcall) and then calls the handler as
 * ordinary code, under the budget. A failing handler's error is returned
 * as xpcall's would be.
 */
static int api_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, n - 2, LUA_MULTRET, 0) == LUA_OK) {
        lua_pushboolean(L, 1);
        lua_replace(L, n); /* n >= 2: the handler's slot is free now */
        return lua_gettop(L) - n + 1;
    }
    lua_pushvalue(L, 2);
    lua_insert(L, -2);
    lua_pcall(L, 1, 1, 0);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

/* Pushes a fresh chunk environment: its own globals, misses go to the
 * library; _G names the environment itself. [-0, +1] */
static void push_env(lua_State *L) {
    lua_createtable(L, 0, 2);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &ENV_MT_KEY);
    lua_setmetatable(L, -2);
}

/* Feeds the compiler SOURCE_PIECE bytes at a time, each charged before it
 * is read: compiling is C work the hook never sees, and a reader may raise
 * (lua_load returns the error). Charging does nothing outside a call. */
struct source {
    const char *s;
    size_t left;
};

static const char *read_piece(lua_State *L, void *ud, size_t *size) {
    struct source *src = ud;
    size_t n = src->left < SOURCE_PIECE ? src->left : SOURCE_PIECE;
    *size = n;
    if (n == 0) return NULL;
    brm_sandbox_charge(L, 1 + (long)(n / SOURCE_BYTES_PER_UNIT));
    const char *piece = src->s;
    src->s += n;
    src->left -= n;
    return piece;
}

/* Compiles text SRC (binary chunks are refused) as luaL_loadbufferx does:
 * pushes the function or the error. */
static int compile(lua_State *L, const char *s, size_t len, const char *chunkname) {
    struct source src = { s, len };
    return lua_load(L, read_piece, &src, chunkname, "t");
}

/* load(chunk [, chunkname [, mode [, env]]]): text only; the loaded code
 * gets a fresh environment unless one is given. */
static int api_load(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    const char *mode = luaL_optstring(L, 3, "t");
    if (!strchr(mode, 't')) return luaL_error(L, "load: only text chunks are allowed");
    int has_env = !lua_isnone(L, 4);
    if (compile(L, s, len, name) != LUA_OK) {
        struct brm_sandbox *sb = brm_sandbox_of(L);
        if (sb->stopped) { /* not a syntax error: the call is over */
            push_stopped(L, sb);
            return lua_error(L);
        }
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (has_env)
        lua_pushvalue(L, 4);
    else
        push_env(L);
    lua_setupvalue(L, -2, 1);
    return 1;
}

static const char *const base_names[] = {
    "assert",   "error", "ipairs",   "next",   "pairs",  "pcall",        "select",   "tonumber",
    "tostring", "type",  "rawequal", "rawlen", "rawget", "getmetatable", "_VERSION",
};

static const luaL_Reg wrapped[] = {
    { "setmetatable", api_setmetatable },
    { "rawset", api_rawset },
    { "collectgarbage", api_collectgarbage },
    { "load", api_load },
    { "xpcall", api_xpcall },
    { NULL, NULL },
};

/* Opens a standard library, strips what rules must not have, prices what
 * is left (library.h) and files a read-only proxy of it into the library
 * table at LIB. */
static void add_stdlib(lua_State *L, int lib, const char *name, lua_CFunction open,
                       const char *const *drop, const char *const *keep) {
    luaL_requiref(L, name, open, 0);
    int t = lua_gettop(L);
    if (keep) {
        lua_newtable(L);
        for (; *keep; keep++) {
            lua_getfield(L, t, *keep);
            lua_setfield(L, -2, *keep);
        }
        lua_replace(L, t);
    }
    for (; drop && *drop; drop++) {
        lua_pushnil(L);
        lua_setfield(L, t, *drop);
    }
    brm_library_open(L, name, t, brm_sandbox_charge);
    push_proxy(L, t, name, 1);
    lua_setfield(L, lib, name);
    lua_pop(L, 1);
}

static int api_require(lua_State *L);

static void open_library(struct brm_sandbox *sb) {
    lua_State *L = sb->L;
    static const char *const no_dump[] = { "dump", NULL };
    static const char *const os_keep[] = { "time", "clock", "date", "difftime", NULL };

    lua_newtable(L); /* weak map table -> proxy */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROXY_OF_KEY);
    lua_newtable(L); /* weak set of proxies */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &PROXIES_KEY);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LOADED_KEY);

    luaL_requiref(L, "_G", luaopen_base, 0);
    int g = lua_gettop(L);
    lua_newtable(L);
    int lib = lua_gettop(L);
    for (size_t i = 0; i < BRM_ARRAY_LEN(base_names); i++) {
        lua_getfield(L, g, base_names[i]);
        lua_setfield(L, lib, base_names[i]);
    }
    luaL_setfuncs(L, wrapped, 0);
    brm_library_open(L, "_G", lib, brm_sandbox_charge);
    lua_pushlightuserdata(L, sb);
    lua_pushcclosure(L, api_require, 1);
    lua_setfield(L, lib, "require");

    add_stdlib(L, lib, "string", luaopen_string, no_dump, NULL);
    add_stdlib(L, lib, "table", luaopen_table, NULL, NULL);
    add_stdlib(L, lib, "math", luaopen_math, NULL, NULL);
    add_stdlib(L, lib, "utf8", luaopen_utf8, NULL, NULL);
    add_stdlib(L, lib, "os", luaopen_os, NULL, os_keep);

    /* Lock the string metatable: getmetatable("") must not hand out the
     * table every string method is looked up in. Its __index is the string
     * library itself, whose matchers become budgeted ones (pattern.h); its
     * arithmetic ("10" + 1) is priced. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_getfield(L, -1, "__index");
    brm_pattern_open(L, -1, brm_sandbox_charge);
    lua_pop(L, 1);
    brm_library_open_string_meta(L, -1, brm_sandbox_charge);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    lua_pushvalue(L, lib);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
    lua_createtable(L, 0, 2); /* shared by every environment, so locked */
    lua_pushvalue(L, lib);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ENV_MT_KEY);
    lua_settop(L, g - 1);
}

struct brm_sandbox *brm_sandbox_new(const struct brm_sandbox_opts *opts) {
    struct brm_sandbox *sb = brm_xcalloc(1, sizeof(*sb));
    sb->limit = opts->memory;
    sb->budget = opts->instructions;
    sb->time_limit = (uint64_t)(opts->time_limit * 1e9);
    /* The ticks a call may see: as many as its limit holds, and one more,
     * for the kernel finds that its CPU timer expired at its next tick, up
     * to a tick later: the first tick a call counts may have expired before
     * it began. More than that many, and it used at least its limit. */
    sb->limit_ticks = (unsigned long)((sb->time_limit + TICK_NS - 1) / TICK_NS) + 1;
    sb->scripts_dir = opts->scripts_dir ? brm_xstrdup(opts->scripts_dir) : NULL;
    sb->rules_dir = opts->rules_dir ? brm_xstrdup(opts->rules_dir) : NULL;
    sb->files = opts->files ? brm_snapshot_ref(opts->files) : brm_snapshot_new();
    sb->L = lua_newstate(sandbox_alloc, sb);
    if (!sb->L) {
        fprintf(stderr, "brume: cannot create a Lua state\n");
        abort();
    }
    /* Most garbage is one request's events: the generational mode frees it
     * young, without full sweeps over the rule set. */
    lua_gc(sb->L, LUA_GCGEN, 0, 0);
    open_library(sb);
    return sb;
}

void brm_sandbox_free(struct brm_sandbox *sb) {
    if (!sb) return;
    if (sb->L) lua_close(sb->L);
    free(sb->scripts_dir);
    free(sb->rules_dir);
    brm_snapshot_free(sb->files);
    free(sb);
}

struct brm_snapshot *brm_sandbox_files(struct brm_sandbox *sb) {
    return sb->files;
}

lua_State *brm_sandbox_state(struct brm_sandbox *sb) {
    return sb->L;
}

size_t brm_sandbox_memory(const struct brm_sandbox *sb) {
    return sb->used;
}

void brm_sandbox_set_ceiling(struct brm_sandbox *sb, size_t bytes) {
    sb->ceiling = bytes;
}

size_t brm_sandbox_memory_limit(const struct brm_sandbox *sb) {
    return sb->limit;
}

void brm_sandbox_push_library(struct brm_sandbox *sb) {
    lua_rawgetp(sb->L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
}

void brm_sandbox_expose(struct brm_sandbox *sb, const char *name) {
    lua_State *L = sb->L;
    int v = lua_gettop(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LIBRARY_KEY);
    if (lua_type(L, v) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, v, name);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &LOADED_KEY);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, name);
        lua_pop(L, 1);
    } else {
        lua_pushvalue(L, v);
    }
    lua_setfield(L, -2, name);
    lua_settop(L, v - 1);
}

/* ---- loading ------------------------------------------------------------ */

/* Splits "file:12: msg" into ERR; a message without a position is kept whole. */
static void split_position(struct brm_err *err, const char *msg) {
    const char *p = msg;
    while ((p = strchr(p, ':')) != NULL) {
        const char *d = p + 1;
        while (*d >= '0' && *d <= '9') d++;
        if (d > p + 1 && d[0] == ':' && d[1] == ' ') {
            size_t flen = (size_t)(p - msg);
            if (flen >= sizeof(err->file)) flen = sizeof(err->file) - 1;
            memcpy(err->file, msg, flen);
            err->file[flen] = '\0';
            err->line = atoi(p + 1);
            snprintf(err->msg, sizeof(err->msg), "%s", d + 2);
            return;
        }
        p++;
    }
    brm_err_set(err, "%s", msg);
}

int brm_sandbox_loadbuffer(struct brm_sandbox *sb, const char *src, size_t len,
                           const char *chunkname, struct brm_err *err) {
    lua_State *L = sb->L;
    sb->enforce++; /* compiling user text may not blow the cap either */
    int st = compile(L, src, len, chunkname);
    sb->enforce--;
    if (st != LUA_OK) {
        if (st == LUA_ERRMEM)
            brm_err_at(err, chunkname + 1, 0, "memory limit reached while compiling");
        else
            split_position(err, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    push_env(L);
    lua_setupvalue(L, -2, 1);
    return 0;
}

int brm_sandbox_loadfile(struct brm_sandbox *sb, const char *path, const char *display,
                         struct brm_err *err) {
    struct brm_buf src;
    brm_buf_init(&src);
    if (brm_snapshot_read(sb->files, path, MAX_SOURCE, &src) < 0) {
        brm_err_at(err, display, 0, "cannot read: %s", strerror(errno));
        brm_buf_reset(&src);
        return -1;
    }
    char *chunkname = brm_xasprintf("@%s", display);
    int rc = brm_sandbox_loadbuffer(sb, src.data ? src.data : "", src.len, chunkname, err);
    free(chunkname);
    brm_buf_reset(&src);
    return rc;
}

/* Module names are dotted words: no "..", no slashes, nothing absolute. */
static int valid_module_name(const char *s) {
    if (!*s || *s == '.') return 0;
    for (const char *p = s; *p; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 *p == '_' || *p == '-' || *p == '.';
        if (!ok || (p[0] == '.' && (p[1] == '.' || p[1] == '\0'))) return 0;
    }
    return 1;
}

/* Finds module NAME and pushes its loaded chunk; raises when it is missing
 * or does not compile. */
static void find_module(lua_State *L, struct brm_sandbox *sb, const char *name) {
    char rel[512];
    struct brm_err err;
    snprintf(rel, sizeof(rel), "%s.lua", name);
    for (char *p = rel; *p && strcmp(p, ".lua") != 0; p++)
        if (*p == '.') *p = '/';
    const char *dirs[] = { sb->scripts_dir, sb->rules_dir };
    for (size_t i = 0; i < BRM_ARRAY_LEN(dirs); i++) {
        if (!dirs[i]) continue;
        char *path = brm_path_join(dirs[i], rel);
        struct brm_buf probe;
        brm_buf_init(&probe);
        int there = brm_snapshot_read(sb->files, path, MAX_SOURCE, &probe) == 0 || errno != ENOENT;
        brm_buf_reset(&probe);
        if (there) {
            char *display = brm_path_display(path);
            int rc = brm_sandbox_loadfile(sb, path, display, &err);
            free(display);
            free(path);
            if (rc < 0) goto fail;
            return;
        }
        free(path);
    }
    for (size_t i = 0; i < brm_embedded_count; i++) {
        if (strcmp(brm_embedded_scripts[i].name, rel) == 0) {
            char chunkname[600];
            snprintf(chunkname, sizeof(chunkname), "@builtin/%s", rel);
            if (brm_sandbox_loadbuffer(sb, brm_embedded_scripts[i].src, brm_embedded_scripts[i].len,
                                       chunkname, &err) < 0)
                goto fail;
            return;
        }
    }
    luaL_error(L,
               "module '%s' not found (looked for %s in the scripts and rules folders and "
               "among the built-in scripts)",
               name, rel);
    return;
fail:;
    char msg[1024];
    brm_err_format(&err, msg, sizeof(msg));
    luaL_error(L, "error loading module '%s': %s", name, msg);
}

/* Finds module NAME (argument 2) and runs its chunk. [-0, +1] */
static int load_module(lua_State *L) {
    struct brm_sandbox *sb = lua_touserdata(L, 1);
    const char *name = lua_tostring(L, 2);
    find_module(L, sb, name);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    return 1;
}

static int api_require(lua_State *L) {
    struct brm_sandbox *sb = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &LOADED_KEY); /* 2 */
    lua_getfield(L, 2, name);
    if (lua_touserdata(L, -1) == &LOADING)
        return luaL_error(L, "module '%s' requires itself (circular require)", name);
    if (!lua_isnil(L, -1)) return 1;
    if (!valid_module_name(name)) return luaL_argerror(L, 1, "not a valid module name");
    lua_pushlightuserdata(L, (void *)&LOADING);
    lua_setfield(L, 2, name);
    /* Found and run protected: a module that fails (or runs out of budget
     * or memory) is forgotten, so the next require tries again instead of
     * reporting a circular require. */
    lua_pushcfunction(L, load_module);
    lua_pushlightuserdata(L, sb);
    lua_pushstring(L, name);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        lua_pushnil(L);
        lua_setfield(L, 2, name);
        return lua_error(L);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        brm_sandbox_push_readonly(L, -1, name);
        lua_remove(L, -2);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, name);
    return 1;
}

/* ---- calling ------------------------------------------------------------ */

static void count_hook(lua_State *L, lua_Debug *ar) {
    struct brm_sandbox *sb = brm_sandbox_of(L);
    if (!sb->time_up && cancelled(sb)) sb->time_up = 1;
    if (!sb->stopped) {
        sb->left -= HOOK_STEP;
        if (sb->time_up)
            stop(sb, STOP_TIME); /* the ticker set this hook to fire now */
        else if (sb->budget > 0 && sb->left <= 0)
            stop(sb, STOP_BUDGET);
        else if (sb->polling && ++sb->hooks % CLOCK_STEP == 0 && out_of_time(sb))
            stop(sb, STOP_TIME);
        else
            return;
    }
    lua_getinfo(L, "Sl", ar);
    const char *what = push_stopped(L, sb);
    if (ar->currentline > 0) lua_pushfstring(L, "%s:%d: %s", ar->short_src, ar->currentline, what);
    lua_error(L);
}

void brm_sandbox_charge(lua_State *L, long units) {
    struct brm_sandbox *sb = brm_sandbox_of(L);
    if (sb->calls == 0) return;
    if (!sb->stopped) {
        sb->left -= units;
        if (sb->budget > 0 && sb->left <= 0)
            stop(sb, STOP_BUDGET);
        else if (out_of_time(sb))
            stop(sb, STOP_TIME);
        else
            return;
    }
    push_stopped(L, sb); /* the message handler places it at the rule's line */
    lua_error(L);
}

int brm_sandbox_abort(lua_State *L, const char *why) {
    struct brm_sandbox *sb = brm_sandbox_of(L);
    if (sb->calls > 0 && sb->stopped != STOP_ABORT) {
        snprintf(sb->why, sizeof(sb->why), "%s", why);
        stop(sb, STOP_ABORT);
    }
    lua_pushstring(L, why);
    return lua_error(L);
}

static int has_position(const char *msg) {
    const char *p = strchr(msg, ':');
    if (!p || p == msg) return 0;
    const char *d = p + 1;
    while (*d >= '0' && *d <= '9') d++;
    return d > p + 1 && d[0] == ':';
}

/* Turns any error object into "file:line: message", placing it at the
 * innermost Lua function when the message does not say where it was. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (has_position(msg)) {
        lua_pushstring(L, msg);
        return 1;
    }
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "Sl", &ar);
        if (ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
            return 1;
        }
    }
    lua_pushstring(L, msg);
    return 1;
}

enum brm_call_status brm_sandbox_call(struct brm_sandbox *sb, int nargs, int nresults,
                                      struct brm_err *err) {
    lua_State *L = sb->L;
    int base = lua_gettop(L) - nargs;
    int outer = sb->calls == 0;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    if (outer) {
        sb->limit_hit = 0;
        sb->stopped = STOP_NONE;
        sb->left = sb->budget;
        start_clock(sb);
        if (sb->budget > 0 || sb->time_limit) lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    }
    sb->enforce++;
    sb->calls++;
    int st = lua_pcall(L, nargs, nresults, base);
    sb->calls--;
    sb->enforce--;
    if (outer) {
        stop_clock(sb);
        lua_sethook(L, NULL, 0, 0);
    }
    lua_remove(L, base);
    /* A stopped call failed even when its error was caught and it returned
     * (`return pcall(f)` needs no instruction after f). */
    enum brm_call_status rc = BRM_CALL_OK;
    if (sb->stopped)
        rc = sb->stopped == STOP_ABORT ? BRM_CALL_ABORTED : BRM_CALL_BUDGET;
    else if (st == LUA_ERRMEM)
        rc = BRM_CALL_MEMORY;
    else if (st != LUA_OK)
        rc = BRM_CALL_ERROR;
    if (rc == BRM_CALL_OK) return rc;

    brm_err_clear(err);
    if (sb->stopped) {
        brm_err_at(err, sb->stop_file, sb->stop_line, "%s", push_stopped(L, sb));
        lua_pop(L, 1);
    } else if (st == LUA_ERRMEM) {
        if (sb->limit_hit) {
            brm_err_at(err, sb->mem_line ? sb->mem_file : "", sb->mem_line,
                       "memory limit of %zu KB reached", sb->limit / 1024);
        } else {
            brm_err_set(err, "out of memory");
        }
    } else {
        const char *msg = lua_tostring(L, -1);
        split_position(err, msg ? msg : "(error in the error handler)");
    }
    lua_settop(L, base - 1);
    return rc;
}
