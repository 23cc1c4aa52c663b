#!/usr/bin/env python3
"""CPU time per request of each process during `warren-bench files` (a).

Runs `target/release/warren-bench files --seconds 10 --size-mib 1
--repetitions 1` from the repository root, samples the user+system CPU time
of the bench client, the bare server, warren's master and its workers from
/proc every 0.25 s, gives each sample to the series that was running then
(the one whose server used more CPU), and divides by the requests each
series completed. See docs/benchmarks.md, issue 15 (a).
"""
import os, time, subprocess, sys, re
TICK = os.sysconf('SC_CLK_TCK')
def cpu(pid):
    try:
        f = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except Exception: return None
def cmd(pid):
    try: return open(f'/proc/{pid}/cmdline','rb').read().split(b'\0')
    except Exception: return []
bench = subprocess.Popen(['target/release/warren-bench','files','--seconds','10','--size-mib','1','--repetitions','1'], stdout=open('/tmp/fa2.out','w'), stderr=subprocess.STDOUT)
roles = {}
acc = {}
prev = {}
while bench.poll() is None:
    for d in os.listdir('/proc'):
        if not d.isdigit(): continue
        pid = int(d)
        if pid in roles: continue
        c = cmd(pid)
        if not c: continue
        exe = os.path.basename(c[0].decode(errors='ignore'))
        args = [a.decode(errors='ignore') for a in c]
        if pid == bench.pid: roles[pid] = 'client'
        elif exe == 'warren-bench' and 'bare-server' in args: roles[pid] = 'bare'
        elif exe == 'warren-bench' and 'serve' in args: roles[pid] = 'master'
        elif open(f'/proc/{pid}/comm').read().strip() == 'warren-worker' and os.getppid() != pid: roles[pid] = 'worker'
    now = {pid: cpu(pid) for pid in roles}
    if prev:
        d = {r: 0.0 for r in ('client','bare','master','worker')}
        for pid, v in now.items():
            if v is not None and prev.get(pid) is not None:
                d[roles[pid]] += v - prev[pid]
        phase = 'warren' if d['master'] > d['bare'] and d['master'] > 0.05 else ('bare' if d['bare'] > 0.05 else None)
        if phase:
            for r, v in d.items(): acc[(phase, r)] = acc.get((phase, r), 0) + v
            acc[(phase,'time')] = acc.get((phase,'time'),0) + 0.25
    prev = now
    time.sleep(0.25)
out = open('/tmp/fa2.out').read()
m = re.search(r'\(a\) warren\s+([\d,]+) requests', out); w = int(m.group(1).replace(',',''))
m = re.search(r'\(a\) bare\s+([\d,]+) requests', out); b = int(m.group(1).replace(',',''))
print('requests warren', w, 'bare', b)
for phase, n in (('warren', w), ('bare', b)):
    t = acc.get((phase,'time'),0)
    print(phase, 'seconds %.1f' % t, ' '.join('%s %.1f%% %.2fus/req' % (r, 100*acc.get((phase,r),0)/max(t,1e-9), 1e6*acc.get((phase,r),0)/n) for r in ('client','master','worker','bare')))
print([l for l in out.splitlines() if l.startswith('(a) GET')])
