import json, sys
cols = [("moka","moka"),("moka-lru","moka-lru"),("foyer-lfu","foyer-lfu/8"),("foyer-lfu-1shard","foyer-lfu/1"),("foyer-s3fifo-1shard","foyer-s3fifo/1"),("foyer-sieve-1shard","foyer-sieve/1"),("wtinylfu-adaptive","W-TinyLFU+climber"),("wtinylfu-minisim","W-TinyLFU+MiniSim")]
for f in sys.argv[1:]:
    d = json.load(open(f))
    print("| trace | budget | entries | LRU | W-TinyLFU | S3-FIFO | SIEVE | Belady | target | " + " | ".join(c[1] for c in cols) + " |")
    print("|" + "---|" * (9 + len(cols)))
    for r in d["rows"]:
        if r["trace"] == "zipf-bench-lru-stream": continue
        ref = r["reference"]
        cells = [r["trace"], r["budget"], f"{r['capacity_entries']:,}"] + [f"{100*ref[k]:.2f}" for k in ["LRU","W-TinyLFU","S3-FIFO","SIEVE","Belady"]] + [f"**{100*r['target']:.2f}**"]
        for k, _ in cols:
            o = r["candidates"][k]
            cells.append(f"{100*o['hit_ratio']:.2f}" + ("" if o["meets_goal"] else " ✗"))
        print("| " + " | ".join(cells) + " |")
    s = d["summary_points_meeting_goal"]
    print("| points meeting the goal | | | | | | | | | " + " | ".join(f"{s[k][0]}/{s[k][1]}" for k, _ in cols) + " |")
    print()
