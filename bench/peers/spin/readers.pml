/* readers(N) (vcpureq.examples.classic.readers): one writer stores 42 to x, N readers
 * load it. */
#ifndef N
#define N 4
#endif

byte x = 0;

proctype writer() { x = 42 }

proctype reader() { byte v; v = x }

init {
    byte i;
    atomic {
        run writer();
        i = 0; do :: i < N -> run reader(); i++ :: else -> break od
    };
    (_nr_pr == 1)
}
