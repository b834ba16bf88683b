"""The viewer in a real browser: headless Chromium driven through chromedriver's W3C WebDriver
HTTP API (Python's standard library only). Loads the page from a running `lafam-gpu serve`,
uploads a fixture image, waits for the maps, moves the opacity slider, changes the layer
(recomputed on the warm engine), clicks a point and checks that the channel and concept panel
appears; saves screenshots. Run by tests/browser.sh, which starts the server and chromedriver.

usage: browser.py DRIVER_URL VIEWER_URL IMAGE OUT_DIR
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

DRIVER, VIEWER, IMAGE, OUT = sys.argv[1:5]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(DRIVER + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())["value"]
    except urllib.error.HTTPError as e:
        raise SystemExit(f"webdriver {method} {path}: {e.code} {e.read().decode()[:500]}")


session = call("POST", "/session", {"capabilities": {"alwaysMatch": {
    "browserName": "chrome",
    "goog:chromeOptions": {
        "binary": os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1500,1000", "--force-device-scale-factor=1"],
    },
}}})["sessionId"]
S = f"/session/{session}"


def shot(name):
    try:
        png = base64.b64decode(call("GET", S + "/screenshot"))
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(png)
        print(f"screenshot: {os.path.join(OUT, name)} ({len(png)} bytes)")
    except SystemExit:
        pass


def fail(msg):
    shot("failure.png")
    raise SystemExit("browser test failed: " + msg)


def js(script, *args):
    return call("POST", S + "/execute/sync", {"script": script, "args": list(args)})


def find(css):
    found = call("POST", S + "/elements", {"using": "css selector", "value": css})
    return [e[ELEMENT] for e in found]


def wait(what, predicate, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = predicate()
        if v:
            return v
        time.sleep(0.25)
    fail(f"timed out after {timeout} s waiting for {what}; status: "
         + str(js("return document.getElementById('status').textContent")))


try:
    call("POST", S + "/url", {"url": VIEWER})
    wait("the page to load its settings",
         lambda: js("return document.getElementById('meta').textContent.startsWith('weights')"))
    print("page:", js("return document.getElementById('meta').textContent"))

    # Upload the image through the file input.
    inp = find("#file")
    if not inp:
        fail("no file input")
    call("POST", f"{S}/element/{inp[0]}/value", {"text": os.path.abspath(IMAGE)})
    wait("the maps", lambda: js(
        "const c = document.querySelectorAll('.card.map');"
        "const imgs = [...document.querySelectorAll('.card.map img')];"
        "return c.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0)"))
    names = js("return [...document.querySelectorAll('.card.map')].map(c => c.dataset.name)")
    print("maps:", names)
    if "lafam" not in names or "lrp" not in names:
        fail(f"expected lafam and lrp maps, got {names}")
    if js("return document.getElementById('status').className") == "error":
        fail("the page shows an error")

    # The opacity slider reaches every overlay.
    js("const s = document.getElementById('opacity'); s.value = '0.3';"
       "s.dispatchEvent(new Event('input'));")
    ops = js("return [...document.querySelectorAll('img.heat')].map(i => i.style.opacity)")
    if not ops or any(o != "0.3" for o in ops):
        fail(f"the slider did not set the overlays' opacity: {ops}")

    # Another layer recomputes on the warm engine.
    js("const s = document.getElementById('layer'); s.value = 'layer3';"
       "s.dispatchEvent(new Event('change'));")
    wait("the layer3 maps", lambda: js(
        "const subs = [...document.querySelectorAll('.card.map h2 + .sub')];"
        "return subs.length > 0 && subs.every(s => s.textContent.includes('layer3'))"
        " && !document.getElementById('status').textContent.startsWith('Explaining')"))
    js("const s = document.getElementById('opacity'); s.value = '0.6';"
       "s.dispatchEvent(new Event('input'));")

    # Click a point of the first map (its centre).
    stack = find(".card.map .stack")
    if not stack:
        fail("no map to click")
    call("POST", f"{S}/element/{stack[0]}/click", {})
    wait("the channel panel", lambda: js(
        "const p = document.getElementById('point');"
        "return !p.hidden && document.querySelectorAll('#channels tbody tr').length > 0"
        " && document.querySelectorAll('#concepts figure').length > 0"
        " && [...document.querySelectorAll('#concepts img')].every(i => i.complete && i.naturalWidth > 0)"))
    rows = js("return [...document.querySelectorAll('#channels tbody tr')].map(r => r.cells[0].textContent)")
    concepts = js("return document.querySelectorAll('#concepts figure').length")
    markers = js("return document.querySelectorAll('.marker').length")
    print(f"point: channels {rows}, {concepts} conditional maps, {markers} markers")
    if markers < 2:
        fail("no marker at the clicked point")
    shot("viewer.png")
    print("browser test passed")
finally:
    call("DELETE", S)
