------------------------------ MODULE Readers ------------------------------
(* readers(N) (vcpureq.examples.classic.readers): one writer stores 42 to x, N readers
   load it (seen[r] is the value reader r read, 0 before it read). *)
EXTENDS Naturals
CONSTANT N
VARIABLES x, wdone, rdone, seen, mpc
vars == <<x, wdone, rdone, seen, mpc>>
R == 1..N

Init == /\ x = 0
        /\ wdone = FALSE
        /\ rdone = [r \in R |-> FALSE]
        /\ seen = [r \in R |-> 0]
        /\ mpc = "join"

Write == /\ ~wdone
         /\ x' = 42
         /\ wdone' = TRUE
         /\ UNCHANGED <<rdone, seen, mpc>>

Read(r) == /\ ~rdone[r]
           /\ seen' = [seen EXCEPT ![r] = x]
           /\ rdone' = [rdone EXCEPT ![r] = TRUE]
           /\ UNCHANGED <<x, wdone, mpc>>

Join == /\ mpc = "join"
        /\ wdone /\ \A r \in R : rdone[r]
        /\ mpc' = "done"
        /\ UNCHANGED <<x, wdone, rdone, seen>>

Next == Write \/ (\E r \in R : Read(r)) \/ Join
Spec == Init /\ [][Next]_vars

NoHang == mpc = "done" \/ ENABLED Next
=============================================================================
