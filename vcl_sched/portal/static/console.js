// The console page: noVNC (Debian's novnc package, served at /novnc) connects to websockify on the master with
// the one-time token of this page; the VNC password is in the page itself, handed to the VM's owner only.
import RFB from '/novnc/core/rfb.js';

const screen = document.getElementById('screen');
const status = document.getElementById('console-status');
const password = screen.dataset.password;
screen.removeAttribute('data-password');
const rfb = new RFB(screen, screen.dataset.url, { credentials: { password } });
rfb.scaleViewport = true;
rfb.addEventListener('connect', () => {
  status.textContent = 'connected';
  document.body.dataset.vnc = 'connected';
});
rfb.addEventListener('disconnect', (e) => {
  status.textContent = e.detail.clean ? 'disconnected' : 'connection lost';
  document.body.dataset.vnc = 'disconnected';
});
rfb.addEventListener('securityfailure', (e) => {
  status.textContent = 'refused: ' + (e.detail.reason || 'wrong password');
  document.body.dataset.vnc = 'refused';
});
rfb.addEventListener('credentialsrequired', () => rfb.sendCredentials({ password }));
