---------------------------- MODULE LostUpdate ----------------------------
(* lost-update: N threads each do count = count + 1 as a load and a store
   (vcpureq.examples.classic.lost_update for N = 2; bench/peers.py's lost_update(N)).
   Main joins them, loads the count (final) and checks it is N: NoLostUpdate fails.
   One action = one visible event of the vcpureq program.  Run with -deadlock: the
   end state (everybody done) has no successor; NoHang flags a stuck main instead. *)
EXTENDS Naturals
CONSTANT N
VARIABLES count, pc, v, mpc, final
vars == <<count, pc, v, mpc, final>>
T == 1..N

Init == /\ count = 0
        /\ pc = [t \in T |-> "load"]
        /\ v = [t \in T |-> 0]
        /\ mpc = "join"
        /\ final = 0

Load(t) == /\ pc[t] = "load"
           /\ v' = [v EXCEPT ![t] = count]
           /\ pc' = [pc EXCEPT ![t] = "store"]
           /\ UNCHANGED <<count, mpc, final>>

Store(t) == /\ pc[t] = "store"
            /\ count' = v[t] + 1
            /\ pc' = [pc EXCEPT ![t] = "done"]
            /\ UNCHANGED <<v, mpc, final>>

Join == /\ mpc = "join"
        /\ \A t \in T : pc[t] = "done"
        /\ mpc' = "check"
        /\ UNCHANGED <<count, pc, v, final>>

Check == /\ mpc = "check"
         /\ final' = count
         /\ mpc' = "done"
         /\ UNCHANGED <<count, pc, v>>

Next == (\E t \in T : Load(t) \/ Store(t)) \/ Join \/ Check
Spec == Init /\ [][Next]_vars

NoLostUpdate == mpc = "done" => final = N
NoHang == mpc = "done" \/ ENABLED Next
=============================================================================
