--------------------------- MODULE GenericRequest ---------------------------
(* The generic vCPU request protocol (vcpureq.arch.generic, scenario
   vcpureq.scenarios.generic.async_request with NV vCPUs and one requester per vCPU,
   request TLB_FLUSH = bit 0), under sequential consistency.  BROKEN = TRUE gives
   generic-check-before-mode (requests checked before IN_GUEST_MODE is published).
   Same model as bench/peers/spin/generic_request.pml: one action = one visible event
   of the vcpureq program; barriers (no-ops under SC), loads of cells nobody writes
   (vcpu->wait, vcpu->cpu) and the unread requester{i}.done store are left out.

   Requester i: set_bit(req, &vcpu->requests); kvm_vcpu_kick: cmpxchg(mode, IN_GUEST,
   EXITING), and if it was IN_GUEST, send the IPI (ipi_sent + 1).
   vCPU i, forever: handle requests (load; if set: test_bit, clear_bit); then
   correct:  mode = IN_GUEST (smp_store_mb); if mode = EXITING or a request is pending:
             mode = OUTSIDE, enable IRQs (take pending IPIs), start over;
   broken:   if a request is pending: enable IRQs, start over; mode = IN_GUEST;
   then run the guest (guest_running = 1, wait until an IPI arrives, guest_running = 0),
   mode = OUTSIDE, enable IRQs, start over.
   Main: join the requesters, then per vCPU wait until its requests are handled or it
   runs the guest with no IPI on its way, and check no request is pending:
   NoLostRequest.  Run with -deadlock (the vCPUs end waiting in the guest); NoHang
   flags a stuck main instead. *)
EXTENDS Naturals
CONSTANTS NV, BROKEN
OUTSIDE == 0
IN_GUEST == 1
EXITING == 2
V == 1..NV

VARIABLES requests, mode, ipi_sent, ipi_acked, guest_running,
          vpc, v, acked,   \* vCPU i: program counter, local value, HostCpu._acked
          rpc, old,        \* requester i: program counter, value the cmpxchg found
          mpc, mi, lost    \* main: program counter, vCPU waited for, a lost request seen
vars == <<requests, mode, ipi_sent, ipi_acked, guest_running, vpc, v, acked,
          rpc, old, mpc, mi, lost>>
shared == <<requests, mode, ipi_sent, ipi_acked, guest_running>>

Entry == IF BROKEN THEN "br_check" ELSE "set_mode"

Init == /\ requests = [i \in V |-> 0]
        /\ mode = [i \in V |-> OUTSIDE]
        /\ ipi_sent = [i \in V |-> 0]
        /\ ipi_acked = [i \in V |-> 0]
        /\ guest_running = [i \in V |-> 0]
        /\ vpc = [i \in V |-> "top"]
        /\ v = [i \in V |-> 0]
        /\ acked = [i \in V |-> 0]
        /\ rpc = [i \in V |-> "set_bit"]
        /\ old = [i \in V |-> 0]
        /\ mpc = "join"
        /\ mi = 1
        /\ lost = FALSE

Go(i, l) == vpc' = [vpc EXCEPT ![i] = l]
Val(i, x) == v' = [v EXCEPT ![i] = x]
Others == <<rpc, old, mpc, mi, lost>>

\* --- vCPU i ---------------------------------------------------------------------
Top(i) == /\ vpc[i] = "top"                         \* READ_ONCE(vcpu->requests)
          /\ Val(i, requests[i])
          /\ Go(i, IF requests[i] # 0 THEN "test_bit" ELSE Entry)
          /\ UNCHANGED <<shared, acked, Others>>
TestBit(i) == /\ vpc[i] = "test_bit"                \* check_request: test_bit
              /\ Val(i, requests[i] % 2)
              /\ Go(i, IF requests[i] % 2 # 0 THEN "clear_bit" ELSE Entry)
              /\ UNCHANGED <<shared, acked, Others>>
ClearBit(i) == /\ vpc[i] = "clear_bit"              \* clear_bit: one atomic RMW
               /\ requests' = [requests EXCEPT ![i] = requests[i] - (requests[i] % 2)]
               /\ Go(i, Entry)
               /\ UNCHANGED <<mode, ipi_sent, ipi_acked, guest_running, v, acked, Others>>
SetMode(i) == /\ vpc[i] = "set_mode"                \* smp_store_mb(mode, IN_GUEST)
              /\ mode' = [mode EXCEPT ![i] = IN_GUEST]
              /\ Go(i, "read_mode")
              /\ UNCHANGED <<requests, ipi_sent, ipi_acked, guest_running, v, acked, Others>>
ReadMode(i) == /\ vpc[i] = "read_mode"              \* READ_ONCE(mode) == EXITING?
               /\ Val(i, mode[i])
               /\ Go(i, IF mode[i] = EXITING THEN "abort" ELSE "read_req")
               /\ UNCHANGED <<shared, acked, Others>>
ReadReq(i) == /\ vpc[i] = "read_req"                \* kvm_request_pending
              /\ Val(i, requests[i])
              /\ Go(i, IF requests[i] # 0 THEN "abort" ELSE "guest_on")
              /\ UNCHANGED <<shared, acked, Others>>
BrCheck(i) == /\ vpc[i] = "br_check"                \* broken: kvm_request_pending first
              /\ Val(i, requests[i])
              /\ Go(i, IF requests[i] # 0 THEN "irq_enable" ELSE "br_mode")
              /\ UNCHANGED <<shared, acked, Others>>
BrMode(i) == /\ vpc[i] = "br_mode"                  \* smp_wmb; WRITE_ONCE(mode, IN_GUEST)
             /\ mode' = [mode EXCEPT ![i] = IN_GUEST]
             /\ Go(i, "guest_on")
             /\ UNCHANGED <<requests, ipi_sent, ipi_acked, guest_running, v, acked, Others>>
GuestOn(i) == /\ vpc[i] = "guest_on"
              /\ guest_running' = [guest_running EXCEPT ![i] = 1]
              /\ Go(i, "guest")
              /\ UNCHANGED <<requests, mode, ipi_sent, ipi_acked, v, acked, Others>>
Guest(i) == /\ vpc[i] = "guest"                     \* wait_until(an IPI arrived)
            /\ ipi_sent[i] > acked[i]
            /\ Go(i, "guest_off")
            /\ UNCHANGED <<shared, v, acked, Others>>
GuestOff(i) == /\ vpc[i] = "guest_off"
               /\ guest_running' = [guest_running EXCEPT ![i] = 0]
               /\ Go(i, "abort")
               /\ UNCHANGED <<requests, mode, ipi_sent, ipi_acked, v, acked, Others>>
Abort(i) == /\ vpc[i] = "abort"                     \* WRITE_ONCE(mode, OUTSIDE); smp_wmb
            /\ mode' = [mode EXCEPT ![i] = OUTSIDE]
            /\ Go(i, "irq_enable")
            /\ UNCHANGED <<requests, ipi_sent, ipi_acked, guest_running, v, acked, Others>>
IrqEnable(i) == /\ vpc[i] = "irq_enable"            \* local_irq_enable: load ipi_sent
                /\ Val(i, ipi_sent[i])
                /\ IF ipi_sent[i] > acked[i]
                   THEN acked' = [acked EXCEPT ![i] = ipi_sent[i]] /\ Go(i, "ack")
                   ELSE UNCHANGED acked /\ Go(i, "top")
                /\ UNCHANGED <<shared, Others>>
Ack(i) == /\ vpc[i] = "ack"                         \* store ipi_acked (csd_unlock)
          /\ ipi_acked' = [ipi_acked EXCEPT ![i] = acked[i]]
          /\ Go(i, "top")
          /\ UNCHANGED <<requests, mode, ipi_sent, guest_running, v, acked, Others>>

Vcpu(i) == Top(i) \/ TestBit(i) \/ ClearBit(i) \/ SetMode(i) \/ ReadMode(i) \/ ReadReq(i)
           \/ BrCheck(i) \/ BrMode(i) \/ GuestOn(i) \/ Guest(i) \/ GuestOff(i) \/ Abort(i)
           \/ IrqEnable(i) \/ Ack(i)

\* --- requester i ----------------------------------------------------------------
RGo(i, l) == rpc' = [rpc EXCEPT ![i] = l]
Locals == <<vpc, v, acked, mpc, mi, lost>>
SetBit(i) == /\ rpc[i] = "set_bit"                  \* smp_wmb; set_bit
             /\ requests' = [requests EXCEPT ![i] = requests[i] - (requests[i] % 2) + 1]
             /\ RGo(i, "cmpxchg")
             /\ UNCHANGED <<mode, ipi_sent, ipi_acked, guest_running, old, Locals>>
Cmpxchg(i) == /\ rpc[i] = "cmpxchg"                 \* cmpxchg(mode, IN_GUEST, EXITING)
              /\ old' = [old EXCEPT ![i] = mode[i]]
              /\ mode' = [mode EXCEPT ![i] = IF mode[i] = IN_GUEST THEN EXITING ELSE mode[i]]
              /\ RGo(i, IF mode[i] = IN_GUEST THEN "ipi" ELSE "done")
              /\ UNCHANGED <<requests, ipi_sent, ipi_acked, guest_running, Locals>>
SendIpi(i) == /\ rpc[i] = "ipi"                     \* smp_send_reschedule: fetch_add
              /\ ipi_sent' = [ipi_sent EXCEPT ![i] = ipi_sent[i] + 1]
              /\ RGo(i, "done")
              /\ UNCHANGED <<requests, mode, ipi_acked, guest_running, old, Locals>>
Requester(i) == SetBit(i) \/ Cmpxchg(i) \/ SendIpi(i)

\* --- main -----------------------------------------------------------------------
MainVars == <<shared, vpc, v, acked, rpc, old>>
Join == /\ mpc = "join"
        /\ \A i \in V : rpc[i] = "done"
        /\ mpc' = "wait"
        /\ UNCHANGED <<MainVars, mi, lost>>
WaitHandledOrStuck ==
        /\ mpc = "wait"
        /\ requests[mi] = 0 \/ (guest_running[mi] = 1 /\ ~(ipi_sent[mi] > ipi_acked[mi]))
        /\ mpc' = "check"
        /\ UNCHANGED <<MainVars, mi, lost>>
Check == /\ mpc = "check"                            \* pending = READ_ONCE(requests)
         /\ lost' = (lost \/ requests[mi] # 0)
         /\ mi' = IF mi < NV THEN mi + 1 ELSE mi
         /\ mpc' = IF mi < NV THEN "wait" ELSE "done"
         /\ UNCHANGED MainVars
Main == Join \/ WaitHandledOrStuck \/ Check

Next == (\E i \in V : Vcpu(i) \/ Requester(i)) \/ Main
Spec == Init /\ [][Next]_vars

NoLostRequest == ~lost
NoHang == mpc = "done" \/ ENABLED Next
=============================================================================
