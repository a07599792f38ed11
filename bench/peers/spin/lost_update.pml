/* lost-update: N threads each do `count = count + 1` as a load and a store
 * (vcpureq.examples.classic.lost_update, N = 2; bench/peers.py's lost_update(N) for N = 3).
 * Main spawns them, joins them all (_nr_pr == 1: only init is left), loads the count
 * and asserts it is N: the assertion fails (an increment is lost).
 * Each Promela statement is one atomic step, so the load and the store are two. */
#ifndef N
#define N 2
#endif

byte count = 0;

proctype increment() {
    byte v;
    v = count;           /* count.load() */
    count = v + 1        /* count.store(v + 1) */
}

init {
    byte i, final;
    atomic { i = 0; do :: i < N -> run increment(); i++ :: else -> break od };
    (_nr_pr == 1);       /* join every thread */
    final = count;       /* count.load() */
    assert(final == N)
}
