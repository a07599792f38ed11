/* Peterson's lock for two threads (vcpureq.examples.classic.peterson; with -DBROKEN,
 * peterson_broken: turn is written before the flag).
 * vcpureq's wait_until(flag[other] == 0 or turn == me) is one atomic evaluation that
 * blocks until it is true: a Promela guard, exactly.  inside.fetch_add(1) is one atomic
 * step; the check that it was 0 is the mutual-exclusion assertion. */
byte flag[2];
byte turn = 0;
byte inside = 0;

proctype proc(byte me) {
    byte other = 1 - me;
    byte n;
#ifdef BROKEN
    turn = other;
    flag[me] = 1;
#else
    flag[me] = 1;
    turn = other;
#endif
    (flag[other] == 0 || turn == me);          /* wait_until */
    atomic { n = inside; inside = inside + 1 };  /* fetch_add(1) */
    assert(n == 0);
    inside = inside - 1;                       /* fetch_add(-1): one atomic statement */
    flag[me] = 0
}

init {
    atomic { run proc(0); run proc(1) };
    (_nr_pr == 1)                              /* join both */
}
