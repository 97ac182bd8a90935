/*
 * Conveyor's delivery protocol for one task, as the hot-path v2 design describes it
 * (docs/reliability.md, "The model"). Checked by Spin: `make model`, tests/model/test_spin.py.
 *
 * Processes: a submitter (store write + outbox intent, publish, confirm, delete intent), the
 * broker (a queue of task messages that redelivers what a dead consumer held, and may duplicate
 * a message), Conveyor workers (claim by compare-and-set with the attempt fence and a store-clock
 * lease, renew, outcome fenced, then ack), foreign workers (the same claim and renewal, asked of
 * the center; the outcome reported on the reports queue, then ack) and the center applying those
 * reports, the reaper (takes over an expired lease, with an intent), the outbox reconciler, and the store's
 * clock (a lease may lapse at any moment: a pause, a slow node, a skewed worker). Any worker,
 * the submitter and the reaper may crash at any step; a crashed worker comes back under a new
 * node id. A message is just the attempt number it carries.
 *
 * Properties (assertions):
 *   P1 lost:    an accepted task is always in the store.
 *   P2 twice:   the store records at most one success.
 *   P3 fence:   an outcome is only ever written by the current owner of the current attempt.
 *   P4 stuck:   when nothing can move any more, an accepted task is final (so no task waits
 *               without a message in the queue or an intent in the outbox).
 *
 * Variants (spin -D...): NOFENCE  outcome and renewal writes check only that the task runs,
 *                                 not its attempt and node (no fencing token);
 *                        NOOUTBOX the store writes that need a message insert no intent.
 * Each must produce a counterexample (tests/model/test_spin.py checks that they do).
 */

#ifndef NCONVEYOR
#define NCONVEYOR 2     /* Conveyor workers */
#endif
#ifndef NFOREIGN
#define NFOREIGN 0      /* foreign workers, whose reports the center applies */
#endif
#ifndef CRASHES
#define CRASHES 2       /* process crashes, in all */
#endif
#ifndef DUPS
#define DUPS 1          /* messages the broker duplicates */
#endif
#ifndef EXPIRIES
#define EXPIRIES 2      /* leases that lapse, in all (each one a take-over) */
#endif
#define MAXCRASH 2      /* the 2nd take-over fails the task as crashed (3rd in Conveyor: same path) */
#define MAXATT 2        /* max_attempts */

mtype = { NONE, QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED };
mtype = { R_SUCCEEDED, R_FAILED };

/* the store: one task row, and its outbox */
mtype status = NONE;
byte attempts = 0;
byte node = 0;          /* owner while running; 0 = none */
bool lease = false;     /* lease_until > store now */
byte crashes = 0;
byte intent = 0;        /* outbox row: 0 = none, else its id */
byte intent_seq = 0;

/* ghosts: what the properties talk about */
bool accepted = false;
byte successes = 0;

byte crash_budget = CRASHES;
byte dup_budget = DUPS;
byte expiry_budget = EXPIRIES;   /* lapses of a live owner's lease (pauses, skew) */
byte dead_a = 0, dead_b = 0;     /* node ids of crashed processes: their leases always lapse */

/* The task queue; a message is the attempt it carries. Order is not guaranteed after
   redeliveries and retries (docs/protocol.md 6), so the queue is a multiset: sent sorted (!!),
   and a consumer may receive any message in it (RECEIVE). Larger than ever filled. */
chan tasks = [6] of { byte };
chan reports = [2] of { mtype, byte, byte };  /* outcome reports: kind, attempt, node */

#define DEAD(n) (n != 0 && (n == dead_a || n == dead_b))
#define DIE(me) if :: dead_a == 0 -> dead_a = me :: else -> dead_b = me fi; me = me + 10
#define FINAL (status == SUCCEEDED || status == FAILED)
#define WAITING (status == QUEUED || status == RETRYING)
#define CRASH (crash_budget > 0) -> crash_budget--

#ifdef NOOUTBOX
#define NEW_INTENT(g) g = 0
#else
#define NEW_INTENT(g) intent_seq = intent_seq % 3 + 1; intent = intent_seq; g = intent
#endif
/* DELETE FROM task_outbox WHERE id = g: one statement, so one atomic step */
#define DELETE_INTENT(g) atomic { if :: (g != 0 && intent == g) -> intent = 0 :: else -> skip fi }

#ifdef NOFENCE
#define OWNS(a, me) (status == RUNNING)   /* the naive check: "still running", by anyone */
#else
#define OWNS(a, me) (status == RUNNING && attempts == a && node == me)
#endif

/* receive any one message of the queue (attempts stay below 5 in this model) */
#define RECEIVE(m) \
    if \
    :: tasks??[eval(1)] -> tasks??eval(1); m = 1 \
    :: tasks??[eval(2)] -> tasks??eval(2); m = 2 \
    :: tasks??[eval(3)] -> tasks??eval(3); m = 3 \
    :: tasks??[eval(4)] -> tasks??eval(4); m = 4 \
    fi

/* an applied outcome: the owner of the current attempt (P3), and at most one success (P2) */
#define RECORD_SUCCESS(a, me) \
    assert(attempts == a && node == me); status = SUCCEEDED; successes++; lease = false; node = 0

proctype Submitter() {
    byte g;
    atomic { status = QUEUED; attempts = 0; accepted = true; NEW_INTENT(g) }  /* one transaction */
    if
    :: CRASH -> goto gone                     /* stored, never published */
    :: else -> skip
    fi;
    tasks!!1;                                 /* publish, confirmed */
    if
    :: CRASH -> goto gone                     /* confirmed, intent not deleted */
    :: else -> DELETE_INTENT(g)
    fi;
gone:
    skip
}

/* A handler failed: retry with an intent while attempts remain (fenced), then publish. */
inline fail_attempt(a, me, g, pub) {
    atomic {
        pub = false;
        if
        :: OWNS(a, me) ->
            assert(attempts == a && node == me);
            node = 0; lease = false;
            if
            :: attempts < MAXATT -> status = RETRYING; NEW_INTENT(g); pub = true
            :: else -> status = FAILED
            fi
        :: else -> skip
        fi
    }
}

/* The claim: one compare-and-set on the store (a Conveyor worker's own statement, or the center's
   answer to a foreign worker's claim: run, drop or later). Jumps to the caller's labels. */
inline claim(m, me, a, held) {
    atomic {
        assert(status != NONE);               /* a message never precedes its row */
        if
        :: FINAL -> goto ack                  /* DROP: already final */
        :: WAITING && m <= attempts -> goto ack          /* DROP: a stale copy of an older attempt */
        :: WAITING && m > attempts ->
            status = RUNNING; attempts = m; node = me; lease = true; a = m
        :: status == RUNNING && node == me && attempts == m -> a = m  /* repeat of its own claim */
        :: status == RUNNING && lease && !(node == me && attempts == m) ->
            tasks!!m; held = false; goto end_idle           /* LATER: hand it back */
        :: status == RUNNING && !lease ->                   /* take over an expired lease */
            crashes++;
            if
            :: crashes >= MAXCRASH -> status = FAILED; node = 0; goto ack
            :: else ->
                if
                :: m > attempts + 1 -> a = m
                :: else -> a = attempts + 1
                fi;
                attempts = a; node = me; lease = true
            fi
        fi
    }
}

/* The handler runs while the lease is renewed, fenced; a renewal that finds the task lost (the
   keeper's own write, or the center's "stop" answer) stops the handler. May crash. Jumps to the
   caller's labels. */
inline run_handler(a, me) {
    do
    :: atomic { OWNS(a, me) -> lease = true }
    :: atomic { !OWNS(a, me) -> goto ack }
    :: break
    :: CRASH -> goto crash
    od
}

/* The broker duplicates a message (bounded). */
inline duplicate(m) {
    atomic { dup_budget > 0 && nempty(tasks) && nfull(tasks) -> dup_budget--; tasks?<m>; tasks!!m }
}

proctype Worker(byte id) {
    byte me = id, m, a, g;
    bool held = false, pub;
end_idle:
    do
    :: nempty(tasks) ->
        atomic { RECEIVE(m); held = true }
        claim(m, me, a, held);
        run_handler(a, me);                   /* the keeper renews */
        if                                    /* outcome, fenced */
        :: atomic { OWNS(a, me) -> RECORD_SUCCESS(a, me) }
        :: atomic { !OWNS(a, me) -> skip }    /* fenced off: changes nothing */
        :: fail_attempt(a, me, g, pub);
           if
           :: pub -> if
                     :: CRASH -> goto crash   /* retry stored, not published: the intent stays */
                     :: else -> tasks!!(a + 1); DELETE_INTENT(g)
                     fi
           :: else -> skip
           fi
        fi;
        if
        :: CRASH -> goto crash                /* outcome stored, not acked: redelivered */
        :: else -> skip
        fi;
ack:    atomic { held = false; m = 0; a = 0; g = 0; pub = false }  /* locals reset: fewer states */
    :: duplicate(m)
    od;
crash:
    if
    :: held -> tasks!!m; held = false         /* the connection dropped: RabbitMQ redelivers */
    :: else -> skip
    fi;
    atomic { DIE(me); m = 0; a = 0; g = 0; pub = false };  /* restarted under a new node id */
    goto end_idle
}

/* A worker in another language (clients/php, docs/protocol.md 7): claims through the center and
   renews through it (answered "stop" once it lost the task, so it stops its handler), then
   reports its outcome on the reports queue (confirmed) and acks: the center applies the outcome
   after the ack, fenced like a Conveyor worker's own write. (The claim-less flow of older foreign
   workers, whose first report starts the attempt, is not modelled.) */
proctype Foreign(byte id) {
    byte me = id, m, a;
    bool held = false;
end_idle:
    do
    :: nempty(tasks) ->
        atomic { RECEIVE(m); held = true }
        claim(m, me, a, held);
        run_handler(a, me);                   /* renewed by heartbeats, answered by the center */
        if
        :: reports!R_SUCCEEDED, a, me         /* confirmed by the broker */
        :: reports!R_FAILED, a, me
        fi;
        if
        :: CRASH -> goto crash                /* report confirmed, message not acked */
        :: else -> skip
        fi;
ack:    atomic { held = false; m = 0; a = 0 }
    :: duplicate(m)
    od;
crash:
    if
    :: held -> tasks!!m; held = false
    :: else -> skip
    fi;
    atomic { DIE(me); m = 0; a = 0 };
    goto end_idle
}

/* The center's report consumer: applies each outcome report fenced (the owner of the current
   attempt only), then acks it. It may die after applying a failure and before publishing the
   retry: the report comes again (fenced: a no-op) and the retry's intent stays in the outbox. */
proctype Center() {
    mtype k; byte a, n, g;
    bool pub;
end_loop:
    do
    :: reports?k, a, n ->
        if
        :: k == R_SUCCEEDED -> atomic { if :: OWNS(a, n) -> RECORD_SUCCESS(a, n) :: else -> skip fi }
        :: k == R_FAILED ->
            fail_attempt(a, n, g, pub);
            if
            :: pub -> if
                      :: CRASH -> skip
                      :: else -> tasks!!(a + 1); DELETE_INTENT(g)
                      fi
            :: else -> skip
            fi
        fi;
        atomic { k = 0; a = 0; n = 0; g = 0; pub = false }
    od
}

/* The store's clock: a running task's lease may lapse at any time (pause, slow or skewed node). */
proctype Clock() {
end_loop:
    do
    :: atomic {
           status == RUNNING && lease && (expiry_budget > 0 || DEAD(node)) ->
           if
           :: DEAD(node) -> skip              /* its owner died: nobody renews it */
           :: else -> expiry_budget--         /* a live owner's lease lapses anyway */
           fi;
           lease = false
       }
    od
}

/* The reaper: takes over a task whose lease lapsed, with an intent, then publishes. */
proctype Reaper() {
    byte g, m;
    bool pub;
end_loop:
    do
    :: atomic {
           status == RUNNING && !lease ->
           crashes++; node = 0; pub = false;
           if
           :: crashes >= MAXCRASH -> status = FAILED
           :: else -> status = QUEUED; NEW_INTENT(g); m = attempts + 1; pub = true
           fi
       };
       if
       :: pub -> if
                 :: CRASH -> skip             /* the reaper's process died before publishing */
                 :: else -> tasks!!m; DELETE_INTENT(g)
                 fi
       :: else -> skip
       fi;
       atomic { g = 0; m = 0; pub = false }
    od
}

/* The outbox reconciler (scheduler leader, workers): republishes intents past their grace. */
proctype Reconciler() {
    byte g, m;
    bool pub;
end_loop:
    do
    :: atomic {
           intent != 0 -> g = intent; pub = WAITING; m = attempts + 1
       };
       if
       :: pub -> tasks!!m
       :: else -> skip                        /* running or final: the message did its job */
       fi;
       DELETE_INTENT(g);
       atomic { g = 0; m = 0; pub = false }
    od
}

/* P1 at every step */
active proctype Monitor() {
end_watch:
    atomic { !(!accepted || status != NONE) -> assert(false) }
}

/* P4 when the system can make no move: every process is blocked */
active proctype Quiescence() {
end_wait:
    timeout -> assert(!accepted || FINAL)
}

init {
    byte i;
    atomic {
        run Submitter();
        i = 1;
        do
        :: i <= NCONVEYOR -> run Worker(i); i++
        :: else -> break
        od;
        do
        :: i <= NCONVEYOR + NFOREIGN -> run Foreign(i); i++
        :: else -> break
        od;
        if
        :: NFOREIGN > 0 -> run Center()
        :: else -> skip
        fi;
        run Clock();
        run Reaper();
        run Reconciler()
    }
}
