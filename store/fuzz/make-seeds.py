import tarfile, io, json, hashlib, gzip, os, sys, subprocess
out = sys.argv[1]
os.makedirs(out+'/layer', exist_ok=True); os.makedirs(out+'/readers', exist_ok=True)
def trim(v):
    v=v.rstrip(b'\0'); n=(len(v)+511)//512*512
    return v.ljust(n,b'\0')+b'\0'*1024
def mk(entries, fmt=tarfile.PAX_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w', format=fmt) as t:
        for e in entries:
            ti = tarfile.TarInfo(e[0]); kind = e[1]
            if kind == 'f':
                ti.size = len(e[2]); ti.mode = 0o644; t.addfile(ti, io.BytesIO(e[2]))
            elif kind == 'd':
                ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
            elif kind == 'l':
                ti.type = tarfile.SYMTYPE; ti.linkname = e[2]; t.addfile(ti)
            elif kind == 'h':
                ti.type = tarfile.LNKTYPE; ti.linkname = e[2]; t.addfile(ti)
            elif kind == 'p':
                ti.type = tarfile.FIFOTYPE; t.addfile(ti)
            elif kind == 'x':
                ti.size = 1; ti.pax_headers = {'SCHILY.xattr.user.k': 'v'}; t.addfile(ti, io.BytesIO(b'x'))
    return trim(b.getvalue())
basic = mk([('etc','d'),('etc/hosts','f',b'127.0.0.1 x\n'),('etc/link','l','hosts'),('etc/hard','h','etc/hosts'),('run','d'),('run/fifo','p'),('x','x')])
wh = mk([('a','d'),('a/.wh..wh..opq','f',b''),('a/.wh.b','f',b''),('c'*120+'/'+'d'*60,'f',b'long')])
gnu = mk([('g'*150,'f',b'gnu long name'),('lnk','l','../../'+'t'*120)], tarfile.GNU_FORMAT)
seeds = {'basic.tar': basic, 'whiteouts.tar': wh, 'gnu.tar': gnu, 'basic.tar.gz': gzip.compress(basic, mtime=0)}
zs = subprocess.run(['zstd','-q','-c'], input=basic, capture_output=True).stdout
if zs: seeds['basic.tar.zst'] = zs
for k,v in seeds.items(): open(f'{out}/layer/{k}','wb').write(v)
# readers: docker-archive form (odd mode byte) and raw tar archive (even)
layer = mk([('hello','f',b'hi\n')])
diff = 'sha256:'+hashlib.sha256(layer).hexdigest()
cfg = json.dumps({"architecture":"amd64","os":"linux","config":{"Cmd":["/hello"],"Env":["A=b"]},"rootfs":{"type":"layers","diff_ids":[diff]},"history":[{"created_by":"x"}]}, separators=(',',':')).encode()
man = json.dumps([{"Config":"config.json","RepoTags":["seed:latest"],"Layers":["layer/layer.tar"]}]).encode()
open(f'{out}/readers/docker-wrapped','wb').write(b'\x01'+man+b'\n--\n'+cfg+b'\n--\n'+layer)
# the same archive as a raw tar
b = io.BytesIO()
with tarfile.open(fileobj=b, mode='w', format=tarfile.USTAR_FORMAT) as t:
    for n,d in [('manifest.json',man),('config.json',cfg),('layer/layer.tar',layer)]:
        ti=tarfile.TarInfo(n); ti.size=len(d); t.addfile(ti, io.BytesIO(d))
open(f'{out}/readers/docker-raw','wb').write(b'\x00'+trim(b.getvalue()))
# OCI layout
lg = 'sha256:'+hashlib.sha256(layer).hexdigest(); cg='sha256:'+hashlib.sha256(cfg).hexdigest()
m = json.dumps({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cg,"size":len(cfg)},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":lg,"size":len(layer)}]}).encode()
mg='sha256:'+hashlib.sha256(m).hexdigest()
idx = json.dumps({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":mg,"size":len(m),"annotations":{"org.opencontainers.image.ref.name":"seed:oci"}}]}).encode()
b = io.BytesIO()
with tarfile.open(fileobj=b, mode='w', format=tarfile.USTAR_FORMAT) as t:
    for n,d in [('oci-layout',b'{"imageLayoutVersion":"1.0.0"}'),('index.json',idx),('blobs/sha256/'+mg[7:],m),('blobs/sha256/'+cg[7:],cfg),('blobs/sha256/'+lg[7:],layer)]:
        ti=tarfile.TarInfo(n); ti.size=len(d); t.addfile(ti, io.BytesIO(d))
open(f'{out}/readers/oci-raw','wb').write(b'\x02'+trim(b.getvalue()))
open(f'{out}/readers/ref','wb').write(b'\x01docker.io/library/alpine:3.19@sha256:'+b'a'*64)
open(f'{out}/readers/platform','wb').write(b'\x01linux/arm64/v8')
