----------------------------- MODULE LastZero -----------------------------
(* lastzero(N) (Abdulla et al., POPL'14; vcpureq.examples.classic.lastzero): array[0..N]
   all 0; the reader scans from array[N] down for the last zero (one load per step),
   writer j (1..N) does array[j] = array[j-1] + 1 as a load and a store. *)
EXTENDS Naturals
CONSTANT N
VARIABLES array, i, rdone, wpc, v, mpc
vars == <<array, i, rdone, wpc, v, mpc>>
W == 1..N

Init == /\ array = [k \in 0..N |-> 0]
        /\ i = N
        /\ rdone = FALSE
        /\ wpc = [j \in W |-> "load"]
        /\ v = [j \in W |-> 0]
        /\ mpc = "join"

Scan == /\ ~rdone
        /\ IF array[i] # 0 THEN i' = i - 1 /\ rdone' = FALSE
                           ELSE rdone' = TRUE /\ i' = i
        /\ UNCHANGED <<array, wpc, v, mpc>>

Load(j) == /\ wpc[j] = "load"
           /\ v' = [v EXCEPT ![j] = array[j - 1]]
           /\ wpc' = [wpc EXCEPT ![j] = "store"]
           /\ UNCHANGED <<array, i, rdone, mpc>>

Store(j) == /\ wpc[j] = "store"
            /\ array' = [array EXCEPT ![j] = v[j] + 1]
            /\ wpc' = [wpc EXCEPT ![j] = "done"]
            /\ UNCHANGED <<i, rdone, v, mpc>>

Join == /\ mpc = "join"
        /\ rdone /\ \A j \in W : wpc[j] = "done"
        /\ mpc' = "done"
        /\ UNCHANGED <<array, i, rdone, wpc, v>>

Next == Scan \/ (\E j \in W : Load(j) \/ Store(j)) \/ Join
Spec == Init /\ [][Next]_vars

NoHang == mpc = "done" \/ ENABLED Next
=============================================================================
