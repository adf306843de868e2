"""The tables of docs/MULTIDOMAIN.md from `siren compare` outputs.

    python3 scripts/multidomain_tables.py domains [--ceiling DATASET/dataset.json] compare.json...
    python3 scripts/multidomain_tables.py collapse compare.json...

Runs of the same model in several files (seeds run apart) are pooled.
"""
import json,sys,statistics as st
def load(p): return json.load(open(p))
def ms(v):
    v=[x for x in v if x is not None]
    if not v: return "n/a"
    m=st.mean(v); s=st.stdev(v) if len(v)>1 else 0.0
    return f"{m:.4f} ± {s:.4f}"
def domain_table(reports, ceiling=None, names=None):
    runs=[r for rep in reports for r in rep['runs']]
    models=[]
    for r in runs:
        if r['model'] not in models: models.append(r['model'])
    doms=[d['domain'] for d in runs[0]['domains']]
    n=sum(d['metrics']['n'] for d in runs[0]['domains'])
    share={d['domain']:d['metrics']['n']/n for d in runs[0]['domains']}
    hdr="| model | overall | head (domain 0) | tail | "+" | ".join(f"{d} ({100*share[d]:.1f}%)" for d in doms if d!=0)+" | train samples/s |"
    out=[hdr,"|---|"+"---:|"*(3+len(doms))]
    for m in models:
        rs=[r for r in runs if r['model']==m]
        row=[m, ms([r['test']['gauc'] for r in rs])]
        dg=lambda d:[next((x['metrics']['gauc'] for x in r['domains'] if x['domain']==d),None) for r in rs]
        row.append(ms(dg(0)))
        row.append(ms([r['tail']['gauc'] if r['tail'] else None for r in rs]))
        for d in doms:
            if d!=0: row.append(ms(dg(d)))
        row.append(f"{st.mean(r['train_samples_per_s'] for r in rs):.0f}")
        out.append("| "+" | ".join(row)+" |")
    if ceiling:
        c=ceiling
        bd=dict((d,g) for d,g in c['test_gauc_by_domain'])
        out.append("| ceiling (true probabilities) | "+f"{c['test_gauc']:.4f} | {bd[0]:.4f} | {c['test_gauc_tail']:.4f} | "+" | ".join(f"{bd[d]:.4f}" for d in doms if d!=0)+" | |")
    return "\n".join(out)
def collapse_table(reports):
    runs=[r for rep in reports for r in rep['runs']]
    models=[]
    for r in runs:
        if r['model'] not in models: models.append(r['model'])
    out=["| model | item | category | user | covariance penalty (kept epoch) |","|---|---:|---:|---:|---:|"]
    for m in models:
        rs=[r for r in runs if r['model']==m]
        row=[m]
        for t in ['item','category','user']:
            vals=[c['sum_over_max'] for r in rs for c in r['collapse'] if c['table'].endswith(t+'.weight')]
            row.append(f"{st.mean(vals):.2f}" + (f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals)>len(rs) else ""))
        pens=[r['epochs'][r['best_epoch']-1].get('train_penalty') for r in rs]
        pens=[p for p in pens if p is not None]
        row.append(f"{st.mean(pens):.4f}" if pens else "-")
        out.append("| "+" | ".join(row)+" |")
    return "\n".join(out)
if __name__=="__main__":
    kind=sys.argv[1]; files=sys.argv[2:]
    ceil=None
    if files[:1]==["--ceiling"]:
        ceil=load(files[1])['details']['ceiling']; files=files[2:]
    reps=[load(f) for f in files]
    print(domain_table(reps, ceil) if kind=="domains" else collapse_table(reps))
