/* The generic vCPU request protocol (vcpureq.arch.generic, scenario
 * vcpureq.scenarios.generic.async_request with NV vCPUs and one requester per vCPU,
 * request TLB_FLUSH = bit 0), under sequential consistency.  -DBROKEN gives
 * generic-check-before-mode (requests checked before IN_GUEST_MODE is published).
 *
 * One Promela statement = one visible event of the vcpureq program, with two
 * simplifications that change no verdict: barriers (no-ops under SC) are omitted, and so
 * are the loads of cells nobody writes (vcpu->wait, always RCUWAIT_NONE, in
 * kvm_vcpu_wake_up; vcpu->cpu in kvm_vcpu_kick), and requester{i}.done, which the async
 * scenario writes but never reads.
 *
 * Requester i: set_bit(req, &vcpu->requests); kvm_vcpu_kick: cmpxchg(mode, IN_GUEST,
 * EXITING), and if it was IN_GUEST, send the IPI (ipi_sent++).
 * vCPU i, forever: handle requests (load; if set: test_bit, clear_bit); then
 * correct:  mode = IN_GUEST (smp_store_mb); if mode == EXITING or a request is pending:
 *           mode = OUTSIDE, enable IRQs (take pending IPIs), start over;
 * broken:   if a request is pending: enable IRQs, start over; mode = IN_GUEST;
 * then run the guest (guest_running = 1, wait until an IPI arrives, guest_running = 0),
 * mode = OUTSIDE, enable IRQs, start over.
 * Main: join the requesters, then per vCPU wait until its requests are handled or it runs
 * the guest with no IPI on its way, and assert no request is pending (no lost request). */
#ifndef NV
#define NV 1
#endif
#define OUTSIDE 0
#define IN_GUEST 1
#define EXITING 2

byte requests[NV];
byte mode[NV];
byte ipi_sent[NV];
byte ipi_acked[NV];
bit guest_running[NV];

proctype vcpu(byte me) {
    byte acked = 0;          /* HostCpu._acked: the CPU's own copy of ipi_acked */
    byte v;
top:
    /* handle_requests */
    v = requests[me];                        /* READ_ONCE(vcpu->requests) */
    if
    :: v != 0 ->
        v = requests[me] & 1;                /* check_request: test_bit */
        if
        :: v != 0 -> requests[me] = requests[me] & 254   /* clear_bit: one atomic RMW */
        :: else -> skip
        fi
    :: else -> skip
    fi;
    /* local_irq_disable (local); enter_guest_mode */
#ifdef BROKEN
    v = requests[me];                        /* request_pending */
    if
    :: v != 0 -> goto irq_enable             /* abort (mode untouched) */
    :: else -> skip
    fi;
    mode[me] = IN_GUEST;                     /* smp_wmb; WRITE_ONCE(mode, IN_GUEST) */
#else
    mode[me] = IN_GUEST;                     /* smp_store_mb(mode, IN_GUEST) */
    v = mode[me];                            /* READ_ONCE(mode) */
    if
    :: v == EXITING -> goto abort
    :: else ->
        v = requests[me];                    /* request_pending */
        if
        :: v != 0 -> goto abort
        :: else -> skip
        fi
    fi;
#endif
    /* run_guest */
    guest_running[me] = 1;
end_guest:
    (ipi_sent[me] > acked);                  /* wait_until(an IPI arrived) */
    guest_running[me] = 0;
abort:
    mode[me] = OUTSIDE;                      /* WRITE_ONCE(mode, OUTSIDE); smp_wmb */
irq_enable:
    /* local_irq_enable: take pending IPIs */
    v = ipi_sent[me];
    if
    :: v > acked -> acked = v; ipi_acked[me] = v
    :: else -> skip
    fi;
    goto top
}

proctype requester(byte me) {
    byte old;
    requests[me] = requests[me] | 1;         /* smp_wmb; set_bit */
    atomic {                                 /* cmpxchg(mode, IN_GUEST, EXITING) */
        old = mode[me];
        if
        :: old == IN_GUEST -> mode[me] = EXITING
        :: else -> skip
        fi
    };
    if
    :: old == IN_GUEST -> ipi_sent[me] = ipi_sent[me] + 1   /* smp_send_reschedule */
    :: else -> skip
    fi
}

init {
    byte i, pending;
    atomic {
        i = 0; do :: i < NV -> run vcpu(i); i++ :: else -> break od;
        i = 0; do :: i < NV -> run requester(i); i++ :: else -> break od
    };
    (_nr_pr == NV + 1);                      /* join the requesters (vCPUs never end) */
    i = 0;
    do
    :: i < NV ->
        (requests[i] == 0 || (guest_running[i] && !(ipi_sent[i] > ipi_acked[i])));
        pending = requests[i];
        assert(pending == 0);
        i++
    :: else -> break
    od
}
