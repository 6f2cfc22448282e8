//! A real S3 server for the storage tests: moto's server mode (S3 over HTTP on 127.0.0.1, installed by
//! scripts/deps.sh), one per test that needs it, stopped on drop. Reads and bucket creation go through boto3,
//! a client independent of the `object_store` crate the agent writes with.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct S3Server {
    pub port: u16,
    child: Child,
}

const CLIENT: &str = "import boto3,sys\ns3=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='sonde',aws_secret_access_key='sonde-secret',region_name='us-east-1')\n";

impl S3Server {
    pub fn start() -> S3Server {
        let port = crate::free_port();
        let child = Self::spawn(port);
        let server = S3Server { port, child };
        server.wait_listening();
        server
    }

    /// Stops the server (an outage: connections are refused). Its buckets and objects go with it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port, empty: create the bucket again.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port);
        self.wait_listening();
    }

    fn spawn(port: u16) -> Child {
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/deps.sh installs moto[server])")
    }

    fn wait_listening(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the S3 server did not listen on {} within 10 s", self.port);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What a client of this server needs, as the usual AWS_* environment.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "sonde".into()),
            ("AWS_SECRET_ACCESS_KEY", "sonde-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn python(&self, code: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new("python3")
            .args(["-c", &format!("{CLIENT}{code}"), &self.endpoint()])
            .args(args)
            .output()
            .expect("python3 with boto3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.python("s3.create_bucket(Bucket=sys.argv[2])", &[bucket]);
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.python(
            "for o in s3.list_objects_v2(Bucket=sys.argv[2]).get('Contents', []): print(o['Key'])",
            &[bucket],
        );
        String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.python(
            "sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read())",
            &[bucket, key],
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
