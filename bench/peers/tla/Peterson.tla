----------------------------- MODULE Peterson -----------------------------
(* Peterson's lock for two threads (vcpureq.examples.classic.peterson; BROKEN = TRUE
   gives peterson_broken, which writes turn before its flag).  wait_until(flag[other]
   = 0 or turn = me) is one atomic evaluation that blocks until true: an enabling
   condition.  inside.fetch_add(1) is one action; MutualExclusion says it always
   returned 0 (n is the value it returned). *)
EXTENDS Naturals
CONSTANT BROKEN
VARIABLES flag, turn, inside, pc, n, mpc
vars == <<flag, turn, inside, pc, n, mpc>>
P == {0, 1}
Other(p) == 1 - p

Init == /\ flag = [p \in P |-> 0]
        /\ turn = 0
        /\ inside = 0
        /\ pc = [p \in P |-> IF BROKEN THEN "turn" ELSE "flag"]
        /\ n = [p \in P |-> 0]
        /\ mpc = "join"

Goto(p, l) == pc' = [pc EXCEPT ![p] = l]

SetFlag(p) == /\ pc[p] = "flag"
              /\ flag' = [flag EXCEPT ![p] = 1]
              /\ Goto(p, IF BROKEN THEN "wait" ELSE "turn")
              /\ UNCHANGED <<turn, inside, n, mpc>>

SetTurn(p) == /\ pc[p] = "turn"
              /\ turn' = Other(p)
              /\ Goto(p, IF BROKEN THEN "flag" ELSE "wait")
              /\ UNCHANGED <<flag, inside, n, mpc>>

Wait(p) == /\ pc[p] = "wait"
           /\ flag[Other(p)] = 0 \/ turn = p
           /\ Goto(p, "enter")
           /\ UNCHANGED <<flag, turn, inside, n, mpc>>

Enter(p) == /\ pc[p] = "enter"
            /\ n' = [n EXCEPT ![p] = inside]
            /\ inside' = inside + 1
            /\ Goto(p, "leave")
            /\ UNCHANGED <<flag, turn, mpc>>

Leave(p) == /\ pc[p] = "leave"
            /\ inside' = inside - 1
            /\ Goto(p, "unflag")
            /\ UNCHANGED <<flag, turn, n, mpc>>

Unflag(p) == /\ pc[p] = "unflag"
             /\ flag' = [flag EXCEPT ![p] = 0]
             /\ Goto(p, "done")
             /\ UNCHANGED <<turn, inside, n, mpc>>

Join == /\ mpc = "join"
        /\ \A p \in P : pc[p] = "done"
        /\ mpc' = "done"
        /\ UNCHANGED <<flag, turn, inside, pc, n>>

Next == \/ \E p \in P : SetFlag(p) \/ SetTurn(p) \/ Wait(p) \/ Enter(p) \/ Leave(p) \/ Unflag(p)
        \/ Join
Spec == Init /\ [][Next]_vars

MutualExclusion == \A p \in P : n[p] = 0
NoHang == mpc = "done" \/ ENABLED Next
=============================================================================
