/* lastzero(N) (Abdulla et al., POPL'14; vcpureq.examples.classic.lastzero): array[0..N]
 * all 0; the reader scans from array[N] down for the last zero, writer j (1..N) does
 * array[j] = array[j-1] + 1 as a load and a store. */
#ifndef N
#define N 5
#endif

byte array[N + 1];

proctype reader() {
    byte i = N;
    do
    :: array[i] != 0 -> i--      /* one load per iteration */
    :: else -> break
    od
}

proctype writer(byte j) {
    byte v;
    v = array[j - 1];
    array[j] = v + 1
}

init {
    byte j;
    atomic {
        run reader();
        j = 1; do :: j <= N -> run writer(j); j++ :: else -> break od
    };
    (_nr_pr == 1)
}
